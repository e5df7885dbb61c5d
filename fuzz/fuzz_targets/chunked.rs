//! Chunked bodies, fed as reads deliver them (the first byte picks the read size): the decoder
//! never claims more than it was given, data ranges lie inside the input, and it always ends.
#![no_main]

use kedge::http::{ChunkEvent, ChunkedDecoder};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&step, body)) = data.split_first() else { return };
    let step = usize::from(step.max(1));
    let mut decoder = ChunkedDecoder::new();
    let (mut taken, mut avail) = (0, 0);
    for _ in 0..=2 * body.len() + 2 {
        let input = &body[taken..avail];
        match decoder.step(input) {
            Ok((used, event)) => {
                assert!(used <= input.len());
                if let ChunkEvent::Data(r) = &event {
                    assert!(r.end <= input.len() && !r.is_empty());
                }
                taken += used;
                match event {
                    ChunkEvent::End { .. } => return,
                    ChunkEvent::NeedMore if avail == body.len() => return,
                    ChunkEvent::NeedMore => avail = (avail + step).min(body.len()),
                    ChunkEvent::Data(_) => {}
                }
            }
            Err(_) => return,
        }
    }
    panic!("the decoder made no progress");
});
