//! File sets: never a panic; every name a plain one, each once; no file
//! longer than it announced, none above the limits.
#![no_main]

use libfuzzer_sys::fuzz_target;
use std::collections::HashSet;
use tern_proto::fileset::{check_name, FileEvent, FileSetDecoder, FileSetLimits};

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let step = usize::from(sel & 0x3f) + 1;
    let limits = FileSetLimits { max_files: 8, max_file_len: 1 << 16, max_total: 1 << 18 };
    let mut dec = FileSetDecoder::with_limits(limits);
    let mut names = HashSet::new();
    let mut open: Option<u64> = None;
    let mut total = 0u64;
    for chunk in rest.chunks(step) {
        let r = dec.feed(chunk, &mut |e| {
            match e {
                FileEvent::Start { name, len } => {
                    assert!(open.is_none(), "a file started inside another");
                    assert!(check_name(name).is_ok(), "a bad name passed: {name:?}");
                    assert!(names.insert(name.to_string()), "a duplicate passed: {name:?}");
                    assert!(names.len() <= limits.max_files);
                    assert!(len <= limits.max_file_len);
                    total += len;
                    assert!(total <= limits.max_total);
                    open = Some(len);
                }
                FileEvent::Data(b) => {
                    let left = open.as_mut().expect("data outside a file");
                    *left = left.checked_sub(b.len() as u64).expect("more data than announced");
                }
                FileEvent::EndFile => {
                    assert_eq!(open.take(), Some(0), "a file ended early");
                }
            }
            Ok(())
        });
        if r.is_err() {
            return;
        }
    }
    if dec.finish().is_ok() {
        assert!(open.is_none());
    }
});
