//! Frames of every wire message type: the first byte picks the type, the
//! rest is the stream. Decoding never panics; whatever decodes encodes
//! again and decodes back to itself; fed in slices, a frame decodes alike.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::frame::{decode, encode, FrameCollector, WireMessage};
use tern_proto::{CoordinatorSignal, DataHeader, HelloReply, MigrateEvent, Request, Response, SourceMsg, TargetMsg};

fn check<M: WireMessage + PartialEq + std::fmt::Debug>(data: &[u8], step: usize) {
    let whole = decode::<M>(data);
    if let Ok(Some((msg, used))) = &whole {
        assert!(*used <= data.len());
        let again = encode(msg).expect("a decoded message encodes");
        let (back, n) = decode::<M>(&again).expect("re-decodes").expect("whole");
        assert_eq!(&back, msg);
        assert_eq!(n, again.len());
    }
    // The same bytes fed in slices of `step`: the same first message.
    let mut collector = FrameCollector::new(tern_proto::MAX_FRAME_LEN);
    let mut first = None;
    for mut chunk in data.chunks(step) {
        match collector.push::<M>(&mut chunk) {
            Ok(Some(m)) => {
                first = Some(Ok(m));
                break;
            }
            Ok(None) => {}
            Err(e) => {
                first = Some(Err(e));
                break;
            }
        }
    }
    match (&whole, first) {
        (Ok(Some((a, _))), Some(Ok(b))) => assert_eq!(a, &b),
        (Ok(Some(_)), other) => panic!("whole decoded, sliced gave {other:?}"),
        (Err(_), Some(Ok(m))) => panic!("whole refused, sliced decoded {m:?}"),
        _ => {}
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else { return };
    let step = usize::from(sel >> 3) + 1;
    match sel & 7 {
        0 => check::<Request>(rest, step),
        1 => check::<Response>(rest, step),
        2 => check::<SourceMsg>(rest, step),
        3 => check::<TargetMsg>(rest, step),
        4 => check::<MigrateEvent>(rest, step),
        5 => check::<CoordinatorSignal>(rest, step),
        6 => check::<DataHeader>(rest, step),
        _ => check::<HelloReply>(rest, step),
    }
});
