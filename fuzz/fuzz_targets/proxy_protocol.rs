//! PROXY protocol v1/v2 headers: any bytes give a header, "more", or an error; a header's
//! length lies inside the input.
#![no_main]

use kedge::proxy_protocol::{Parsed, parse};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Parsed::Done { len, .. }) = parse(data) {
        assert!(len <= data.len());
    }
});
