//! Delta records against a small base: never a panic, never more output
//! than the limits allow, every reference inside the base.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::delta::{Decoded, DeltaDecoder, DeltaLimits, PAGE, PAGE_RECORD_BYTES};

const BASE_PAGES: u32 = 4;
const MAX_OUTPUT: u64 = 4 << 20;

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let step = usize::from(sel & 0x7f) + 1;
    let limits = if sel & 0x80 == 0 { DeltaLimits::new(BASE_PAGES, MAX_OUTPUT) } else { DeltaLimits::new(0, MAX_OUTPUT) };
    let base: Vec<u8> = (0..BASE_PAGES as usize * PAGE).map(|i| (i / PAGE) as u8).collect();
    let mut dec = DeltaDecoder::with_limits(limits);
    let (mut out, mut pages) = (0u64, 0u64);
    for chunk in rest.chunks(step) {
        let r = dec.feed(chunk, &mut |d| {
            match d {
                Decoded::Raw(b) => out += b.len() as u64,
                Decoded::Pages { index, count } => {
                    let (s, e) = (index as usize * PAGE, (index as usize + count as usize) * PAGE);
                    assert!(e <= base.len(), "a reference outside the base passed: {index}+{count}");
                    out += base[s..e].len() as u64;
                    pages += u64::from(count);
                }
            }
            assert!(out <= MAX_OUTPUT, "output above the limit: {out}");
            Ok(())
        });
        if r.is_err() {
            return;
        }
    }
    let _ = dec.finish();
    // Pages add at most the base once plus one page per record's worth of bytes.
    assert!(pages <= u64::from(BASE_PAGES) + rest.len() as u64 / PAGE_RECORD_BYTES, "{pages} pages from {} bytes", rest.len());
});
