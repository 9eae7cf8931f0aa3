//! `dns::Resolver` against a real authoritative server (`common::dns::FakeDns`): answers,
//! negative answers and every failure kind, kept apart.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use atmos_labeler::dns::{Answer, Error, Mx, Resolver};

use crate::common::dns::{FakeDns, Fault};

fn txt(records: &[&str]) -> Answer<Vec<u8>> {
    Answer::Found(records.iter().map(|r| r.as_bytes().to_vec()).collect())
}

#[tokio::test]
async fn joins_strings_within_a_record_but_never_merges_records() {
    let dns = FakeDns::start().await;
    dns.set_txt_strings(
        "multi.example.test",
        &[
            &["v=spf1 ip4:192.0.2.0/24", " -all"],
            &["second ", "record"],
        ],
    );
    let r = dns.resolver();
    let answer = r.txt("multi.example.test", false).await.unwrap();
    let Answer::Found(mut records) = answer else {
        panic!("{answer:?}");
    };
    records.sort();
    assert_eq!(
        records,
        vec![
            b"second record".to_vec(),
            b"v=spf1 ip4:192.0.2.0/24 -all".to_vec()
        ]
    );
}

#[tokio::test]
async fn tells_nxdomain_from_nodata() {
    let dns = FakeDns::start().await;
    dns.set_txt("a.example.test", &["x"]);
    dns.set_a(
        "deep.below.empty.example.test",
        &[Ipv4Addr::new(11, 0, 0, 1)],
    );
    let r = dns.resolver();
    assert_eq!(
        r.txt("nothing.example.test", false).await.unwrap(),
        Answer::NxDomain
    );
    assert_eq!(r.mx("a.example.test", false).await.unwrap(), Answer::NoData);
    // An empty non-terminal exists (RFC 8020): NODATA, not NXDOMAIN.
    assert_eq!(
        r.txt("empty.example.test", false).await.unwrap(),
        Answer::NoData
    );
    assert_eq!(
        r.ip("nothing.example.test", false).await.unwrap(),
        Answer::NxDomain
    );
    assert_eq!(r.ip("a.example.test", false).await.unwrap(), Answer::NoData);
}

#[tokio::test]
async fn failures_are_errors_naming_the_query() {
    let dns = FakeDns::start().await;
    for name in ["sf.example.test", "rf.example.test", "to.example.test"] {
        dns.set_txt(name, &["present"]);
    }
    dns.fault("sf.example.test", Fault::ServFail);
    dns.fault("rf.example.test", Fault::Refused);
    dns.fault("to.example.test", Fault::Timeout);
    let r = Resolver::new(&[dns.addr()], Duration::from_millis(200)).unwrap();
    let (sf, rf, to) = tokio::join!(
        r.txt("sf.example.test", false),
        r.txt("rf.example.test", false),
        r.txt("to.example.test", false)
    );
    let sf = sf.unwrap_err();
    assert!(matches!(sf, Error::ResponseCode { .. }), "{sf:?}");
    assert!(sf.to_string().contains("sf.example.test") && sf.to_string().contains("TXT"));
    assert!(matches!(rf.unwrap_err(), Error::ResponseCode { .. }));
    let to = to.unwrap_err();
    assert!(matches!(to, Error::Timeout { .. }), "{to:?}");
    assert!(to.to_string().contains("to.example.test"));
    // Both A and AAAA are asked; an error on either is an error.
    dns.set_a("half.example.test", &[Ipv4Addr::new(11, 0, 0, 1)]);
    dns.fault("half.example.test", Fault::ServFail);
    assert!(r.ip("half.example.test", false).await.is_err());
}

#[tokio::test]
async fn truncated_udp_answers_are_retried_over_tcp() {
    let dns = FakeDns::start().await;
    dns.set_txt("big.example.test", &["v=DMARC1; p=reject"]);
    dns.fault("big.example.test", Fault::Truncate);
    let r = dns.resolver();
    assert_eq!(
        r.txt("big.example.test", false).await.unwrap(),
        txt(&["v=DMARC1; p=reject"])
    );
    assert!(dns.query_count("big.example.test") >= 2, "UDP then TCP");
}

#[tokio::test]
async fn follows_cnames_and_filters_by_type() {
    let dns = FakeDns::start().await;
    dns.set_cname("sel_1._domainkey.example.test", "key.provider.test");
    dns.set_txt("key.provider.test", &["v=DKIM1; p=abc"]);
    dns.set_cname("alias.example.test", "dangling.provider.test");
    let r = dns.resolver();
    assert_eq!(
        r.txt("sel_1._domainkey.example.test", false).await.unwrap(),
        txt(&["v=DKIM1; p=abc"])
    );
    assert_eq!(
        r.txt("alias.example.test", false).await.unwrap(),
        Answer::NxDomain
    );
}

#[tokio::test]
async fn reads_a_null_mx_mx_hosts_and_their_v4_and_v6_addresses() {
    let dns = FakeDns::start().await;
    dns.set_mx("null.example.test", &[(0, ".")]);
    dns.set_mx(
        "ok.example.test",
        &[(20, "MX2.Example.Test"), (10, "mx1.example.test")],
    );
    dns.set_a("mx1.example.test", &[Ipv4Addr::new(11, 0, 0, 1)]);
    dns.set_aaaa(
        "mx1.example.test",
        &[Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 1)],
    );
    let r = dns.resolver();
    let Answer::Found(null) = r.mx("null.example.test", false).await.unwrap() else {
        panic!()
    };
    assert_eq!(null.len(), 1);
    assert!(null[0].is_null());
    let Answer::Found(mut ok) = r.mx("ok.example.test", false).await.unwrap() else {
        panic!()
    };
    ok.sort_by_key(|m| m.preference);
    assert_eq!(
        ok,
        vec![
            Mx {
                preference: 10,
                exchange: "mx1.example.test".to_owned()
            },
            Mx {
                preference: 20,
                exchange: "mx2.example.test".to_owned()
            }
        ]
    );
    let Answer::Found(mut ips) = r.ip("mx1.example.test", false).await.unwrap() else {
        panic!()
    };
    ips.sort();
    assert_eq!(
        ips,
        vec![
            IpAddr::V4(Ipv4Addr::new(11, 0, 0, 1)),
            IpAddr::V6(Ipv6Addr::new(0x2a00, 0x1450, 0, 0, 0, 0, 0, 1))
        ]
    );
}

#[tokio::test]
async fn fresh_bypasses_the_cache() {
    let dns = FakeDns::start().await;
    dns.set_ttl(300);
    dns.set_txt("c.example.test", &["old"]);
    let r = dns.resolver();
    assert_eq!(r.txt("c.example.test", false).await.unwrap(), txt(&["old"]));
    dns.set_txt("c.example.test", &["new"]);
    assert_eq!(r.txt("c.example.test", false).await.unwrap(), txt(&["old"]));
    assert_eq!(r.txt("c.example.test", true).await.unwrap(), txt(&["new"]));
    // Negative answers too.
    assert_eq!(
        r.txt("n.example.test", false).await.unwrap(),
        Answer::NxDomain
    );
    dns.set_txt("n.example.test", &["now"]);
    assert_eq!(
        r.txt("n.example.test", false).await.unwrap(),
        Answer::NxDomain
    );
    assert_eq!(r.txt("n.example.test", true).await.unwrap(), txt(&["now"]));
}

#[tokio::test]
async fn rejects_names_it_cannot_query_without_sending() {
    let dns = FakeDns::start().await;
    let r = dns.resolver();
    for bad in [
        "bücher.example.test",
        "a..b.test",
        "",
        "a b.test",
        "a\\046b.test",
    ] {
        let e = r.txt(bad, false).await.unwrap_err();
        assert!(matches!(e, Error::InvalidName { .. }), "{bad}: {e:?}");
    }
    assert_eq!(dns.total_queries(), 0);
}
