//! The lexicons in `lexicons/` are valid Lexicon v1 documents: parsed, structurally checked,
//! file paths matching their NSIDs, and every local `#ref` resolving.

use std::path::{Path, PathBuf};

use serde_json::Value;

const TYPES: &[&str] = &[
    "record",
    "query",
    "procedure",
    "subscription",
    "object",
    "array",
    "string",
    "integer",
    "boolean",
    "bytes",
    "cid-link",
    "blob",
    "ref",
    "union",
    "unknown",
    "token",
    "params",
    "null",
];

fn files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            files(&p, out);
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
}

/// Walks every schema node, checking `type` and collecting refs.
fn walk(v: &Value, path: &str, refs: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            if let Some(t) = m.get("type").and_then(Value::as_str) {
                assert!(TYPES.contains(&t), "{path}: unknown type {t:?}");
                match t {
                    "ref" => refs.push(m["ref"].as_str().unwrap().to_owned()),
                    "union" => refs.extend(
                        m["refs"]
                            .as_array()
                            .unwrap()
                            .iter()
                            .map(|r| r.as_str().unwrap().to_owned()),
                    ),
                    "array" => assert!(m.contains_key("items"), "{path}: array without items"),
                    "object" | "params" => {
                        let props = m.get("properties").and_then(Value::as_object);
                        for req in m
                            .get("required")
                            .and_then(Value::as_array)
                            .into_iter()
                            .flatten()
                        {
                            let r = req.as_str().unwrap();
                            assert!(
                                props.is_some_and(|p| p.contains_key(r)),
                                "{path}: required {r:?} is not a property"
                            );
                        }
                    }
                    "record" => {
                        assert!(m.contains_key("key") && m.contains_key("record"), "{path}")
                    }
                    _ => {}
                }
            }
            for (k, x) in m {
                walk(x, &format!("{path}.{k}"), refs);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                walk(x, &format!("{path}[{i}]"), refs);
            }
        }
        _ => {}
    }
}

#[test]
fn every_lexicon_is_valid_and_where_its_nsid_says() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let mut all = Vec::new();
    files(&root, &mut all);
    assert!(all.len() >= 5, "{all:?}");
    for file in all {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap())
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        assert_eq!(doc["lexicon"], 1, "{}", file.display());
        let id = doc["id"].as_str().unwrap();
        let expected = format!("{}.json", id.replace('.', "/"));
        assert!(file.ends_with(&expected), "{} holds {id}", file.display());
        assert!(id.starts_with("email.atmos."), "{id}");
        let defs = doc["defs"].as_object().unwrap();
        let main = &defs["main"];
        assert!(main.is_object(), "{id}: no main def");
        let mut refs = Vec::new();
        walk(&doc["defs"], id, &mut refs);
        for r in refs {
            if let Some(local) = r.strip_prefix('#') {
                assert!(defs.contains_key(local), "{id}: dangling ref {r}");
            } else {
                assert!(r.contains('.') && !r.ends_with('#'), "{id}: bad ref {r}");
            }
        }
    }
}

#[test]
fn the_attestation_lexicon_matches_what_the_labeler_accepts() {
    let text = std::fs::read_to_string(
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons/email/atmos/attestation.json"),
    )
    .unwrap();
    let doc: Value = serde_json::from_str(&text).unwrap();
    let rec = &doc["defs"]["main"]["record"];
    assert_eq!(doc["defs"]["main"]["key"], "any");
    assert_eq!(
        rec["required"],
        serde_json::json!(["domain", "dkimSelectors", "createdAt"])
    );
    let sel = &rec["properties"]["dkimSelectors"];
    assert_eq!(sel["minLength"], 1);
    assert_eq!(
        sel["maxLength"].as_u64().unwrap() as usize,
        atmos_labeler::attestation::MAX_SELECTORS
    );
    assert_eq!(rec["properties"]["createdAt"]["format"], "datetime");
}

fn lexicon(nsid: &str) -> Value {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("lexicons")
        .join(format!("{}.json", nsid.replace('.', "/")));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn errors(doc: &Value) -> Vec<&str> {
    doc["defs"]["main"]["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["name"].as_str().unwrap())
        .collect()
}

fn keys(v: &Value) -> Vec<&str> {
    v.as_object().unwrap().keys().map(String::as_str).collect()
}

#[test]
fn refs_into_other_email_atmos_lexicons_resolve() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("lexicons");
    let mut all = Vec::new();
    files(&root, &mut all);
    for file in all {
        let doc: Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let mut refs = Vec::new();
        walk(&doc["defs"], doc["id"].as_str().unwrap(), &mut refs);
        for r in refs.iter().filter(|r| r.starts_with("email.atmos.")) {
            let (nsid, def) = r.split_once('#').unwrap_or((r, "main"));
            assert!(
                lexicon(nsid)["defs"].get(def).is_some(),
                "{}: dangling ref {r}",
                file.display()
            );
        }
    }
}

#[test]
fn the_console_methods_are_described_with_their_inputs_outputs_and_errors() {
    let rv = lexicon("email.atmos.requestVerification");
    let main = &rv["defs"]["main"];
    assert_eq!(main["type"], "procedure");
    assert_eq!(main["input"]["encoding"], "application/json");
    assert_eq!(
        main["input"]["schema"]["required"],
        serde_json::json!(["did"])
    );
    assert_eq!(
        main["output"]["schema"]["required"],
        serde_json::json!(["queued", "did", "attestations"])
    );
    for e in ["InvalidRequest", "UnknownDid", "RateLimitExceeded"] {
        assert!(errors(&rv).contains(&e), "requestVerification: {e}");
    }

    let cd = lexicon("email.atmos.checkDomain");
    let main = &cd["defs"]["main"];
    assert_eq!(main["type"], "query");
    assert_eq!(
        main["parameters"]["required"],
        serde_json::json!(["domain", "did", "selector"])
    );
    let sel = &main["parameters"]["properties"]["selector"];
    assert_eq!(sel["type"], "array");
    assert_eq!(
        sel["maxLength"].as_u64().unwrap() as usize,
        atmos_labeler::attestation::MAX_SELECTORS
    );
    assert_eq!(
        main["output"]["schema"]["properties"]["checks"]["items"]["ref"],
        "email.atmos.getVerification#check",
        "the same check shape as getVerification"
    );
    for e in [
        "InvalidRequest",
        "RateLimitExceeded",
        "TooManyPreflights",
        "MethodNotImplemented",
    ] {
        assert!(errors(&cd).contains(&e), "checkDomain: {e}");
    }

    let gv = lexicon("email.atmos.getVerification");
    let main = &gv["defs"]["main"];
    assert_eq!(
        keys(&main["parameters"]["properties"]),
        ["did", "domain", "handle", "q"]
    );
    assert!(
        main["parameters"].get("required").is_none(),
        "exactly one of them, none required by itself"
    );
    for e in ["InvalidRequest", "HandleNotFound", "UpstreamFailure"] {
        assert!(errors(&gv).contains(&e), "getVerification: {e}");
    }
    let defs = &gv["defs"];
    assert_eq!(defs["check"]["properties"]["fix"]["ref"], "#fix");
    assert_eq!(
        defs["fix"]["required"],
        serde_json::json!(["name", "type", "value"])
    );
    assert_eq!(
        defs["attestationView"]["properties"]["history"]["items"]["ref"],
        "#verdictChange"
    );
    assert!(keys(&defs["operatorView"]["properties"]).contains(&"foundBy"));

    let dl = lexicon("email.atmos.describeLabeler");
    let main = &dl["defs"]["main"];
    assert_eq!(main["type"], "query");
    assert_eq!(
        keys(&main["output"]["schema"]["properties"]),
        ["did", "labelValues", "signingKey"]
    );
}
