//! Response heads from an upstream, for GET and HEAD requests: no panic, ranges inside the input.
#![no_main]

use kedge::http::{Limits, Parsed, parse_response};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut spans = Vec::new();
    for head_request in [false, true] {
        if let Ok(Parsed::Complete(head)) = parse_response(data, &Limits::default(), head_request, &mut spans) {
            assert!(head.head_len <= data.len());
        }
    }
});
