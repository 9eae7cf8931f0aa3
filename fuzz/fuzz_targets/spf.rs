//! Any SPF TXT record from a hostile zone: parsing and judging must never panic, and every
//! judgement comes with a reason.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    atmos_labeler::verify::fuzzing::spf(data);
});
