//! Any config file: loading must never panic, and an error always names the origin.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        if let Err(e) = atmos_labeler::config::Config::from_str(text, "fuzz.json") {
            assert!(e.to_string().starts_with("fuzz.json"), "{e}");
        }
    }
});
