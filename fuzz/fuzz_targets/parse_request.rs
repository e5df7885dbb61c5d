//! Request heads: any bytes parse to a head, "more", or an error, and a head's ranges lie inside
//! the input.
#![no_main]

use kedge::http::{Limits, Parsed, parse_request};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut spans = Vec::new();
    if let Ok(Parsed::Complete(head)) = parse_request(data, &Limits::default(), &mut spans) {
        assert!(head.head_len <= data.len());
        assert!(head.method.end <= head.head_len && head.target.end <= head.head_len);
        for s in &spans {
            assert!(s.name.end <= head.head_len && s.value.end <= head.head_len);
        }
    }
});
