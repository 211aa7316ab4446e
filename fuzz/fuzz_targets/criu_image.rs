//! CRIU's files.img / inetsk.img and tcp-stream images: never a panic.
//! The input is cut in two at a point its first two bytes choose: the
//! files image, and the tcp-stream image every established socket gets.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tern_proto::criu_image::{established_connections, inet_sockets, parse_tcp_stream};

fuzz_target!(|data: &[u8]| {
    if data.len() < 2 {
        return;
    }
    let cut = usize::from(u16::from_le_bytes([data[0], data[1]]));
    let rest = &data[2..];
    let (files, stream) = rest.split_at(cut.min(rest.len()));
    let _ = parse_tcp_stream(rest);
    let _ = parse_tcp_stream(stream);
    if let Ok(sockets) = inet_sockets(files) {
        assert!(sockets.len() <= files.len());
    }
    let _ = inet_sockets(rest);
    if let Ok(conns) = established_connections(files, |_| Some(stream.to_vec())) {
        for c in conns {
            let _ = (c.snd_una(), c.snd_nxt());
        }
    }
});
