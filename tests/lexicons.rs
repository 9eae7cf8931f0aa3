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

/// The reference lexicons in `tests/data/lexicons/`, by NSID.
fn reference_lexicons() -> std::collections::HashMap<String, Value> {
    let mut out = Vec::new();
    files(&crate::common::data_path("lexicons"), &mut out);
    out.iter()
        .map(|f| {
            let doc: Value = serde_json::from_str(&std::fs::read_to_string(f).unwrap()).unwrap();
            (doc["id"].as_str().unwrap().to_owned(), doc)
        })
        .collect()
}

/// Validates `value` against the schema node `node` of lexicon `id` (the subset of Lexicon v1
/// a labeler service record uses: objects, required fields, strings with lengths and formats,
/// arrays, refs and unions), returning every problem with its path.
fn validate(
    lexicons: &std::collections::HashMap<String, Value>,
    id: &str,
    node: &Value,
    value: &Value,
    path: &str,
    problems: &mut Vec<String>,
) {
    let mut fail = |why: String| problems.push(format!("{path}: {why}"));
    match node["type"].as_str().unwrap_or_default() {
        "ref" => {
            let r = node["ref"].as_str().unwrap();
            let (nsid, def) = match r.split_once('#') {
                Some(("", def)) => (id, def),
                Some((nsid, def)) => (nsid, def),
                None => (r, "main"),
            };
            let Some(target) = lexicons.get(nsid).map(|l| &l["defs"][def]) else {
                return fail(format!("unknown lexicon {nsid}"));
            };
            validate(lexicons, nsid, target, value, path, problems);
        }
        "union" => {
            for r in node["refs"].as_array().unwrap() {
                let one = serde_json::json!({"type": "ref", "ref": r});
                let mut p = Vec::new();
                validate(lexicons, id, &one, value, path, &mut p);
                if p.is_empty() {
                    return;
                }
            }
            fail(format!("matches none of {}", node["refs"]));
        }
        "object" => {
            let Some(obj) = value.as_object() else {
                return fail("not an object".into());
            };
            for req in node["required"].as_array().into_iter().flatten() {
                if !obj.contains_key(req.as_str().unwrap()) {
                    fail(format!("missing required {req}"));
                }
            }
            let props = node["properties"].as_object().cloned().unwrap_or_default();
            for (k, v) in obj {
                if let Some(schema) = props.get(k) {
                    validate(lexicons, id, schema, v, &format!("{path}.{k}"), problems);
                }
            }
        }
        "array" => {
            let Some(items) = value.as_array() else {
                return fail("not an array".into());
            };
            if let Some(max) = node["maxLength"].as_u64()
                && items.len() as u64 > max
            {
                fail(format!("more than {max} items"));
            }
            for (i, v) in items.iter().enumerate() {
                validate(
                    lexicons,
                    id,
                    &node["items"],
                    v,
                    &format!("{path}[{i}]"),
                    problems,
                );
            }
        }
        "string" => {
            let Some(s) = value.as_str() else {
                return fail("not a string".into());
            };
            if let Some(max) = node["maxLength"].as_u64()
                && s.len() as u64 > max
            {
                fail(format!("longer than {max} bytes"));
            }
            if let Some(max) = node["maxGraphemes"].as_u64()
                && s.chars().count() as u64 > max
            {
                fail(format!("longer than {max} graphemes"));
            }
            match node["format"].as_str() {
                Some("datetime") if !atmos_labeler::syntax::is_datetime(s) => {
                    fail(format!("{s:?} is not a datetime"));
                }
                Some("language") if !(2..=8).contains(&s.len()) => {
                    fail(format!("{s:?} is not a language tag"));
                }
                _ => {}
            }
        }
        "boolean" if !value.is_boolean() => fail("not a boolean".into()),
        "integer" if !value.is_i64() => fail("not an integer".into()),
        _ => {}
    }
}

#[test]
fn the_service_record_validates_against_the_labeler_service_lexicon() {
    let lexicons = reference_lexicons();
    let record = atmos_labeler::label::service_record();
    assert_eq!(record["$type"], "app.bsky.labeler.service");
    let schema = &lexicons["app.bsky.labeler.service"]["defs"]["main"]["record"];
    let mut problems = Vec::new();
    validate(
        &lexicons,
        "app.bsky.labeler.service",
        schema,
        &record,
        "record",
        &mut problems,
    );
    assert!(problems.is_empty(), "{problems:#?}");

    // What the issue asks of each declared value, and the validator is not vacuous.
    let defs = record["policies"]["labelValueDefinitions"]
        .as_array()
        .unwrap();
    assert_eq!(defs.len(), 2);
    for d in defs {
        assert_eq!(d["severity"], "none");
        assert_eq!(d["blurs"], "none");
        assert_eq!(d["locales"][0]["lang"], "en");
        assert!(!d["locales"][0]["name"].as_str().unwrap().is_empty());
    }
    assert_eq!(record["subjectTypes"], serde_json::json!(["account"]));
    let mut broken = record.clone();
    broken["policies"]["labelValueDefinitions"][0]
        .as_object_mut()
        .unwrap()
        .remove("locales");
    broken["createdAt"] = "yesterday".into();
    let mut problems = Vec::new();
    validate(
        &lexicons,
        "app.bsky.labeler.service",
        schema,
        &broken,
        "record",
        &mut problems,
    );
    assert_eq!(problems.len(), 2, "{problems:#?}");
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
