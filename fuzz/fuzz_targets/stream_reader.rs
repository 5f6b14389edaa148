//! Arbitrary bytes into the XMPP stream reader (`starling::xml::XmlReader`), as a peer would
//! send them. The reader must never panic, and must stop at an error or the stream close.
//! Limits are small so the size and depth checks are reached often.

#![no_main]

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use starling::xml::{Limits, XmlEvent, XmlReader};

/// A reader over `&[u8]` never returns `Pending`, so polling in a loop completes.
fn block_on<F: Future>(fut: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut fut = pin!(fut);
    loop {
        if let Poll::Ready(v) = fut.as_mut().poll(&mut cx) {
            return v;
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_element_bytes: 4096, max_depth: 16 };
    let mut reader = XmlReader::new(data, limits);
    block_on(async {
        // Each event consumes input, so this ends; the bound is a guard against a reader that
        // stops consuming, which would otherwise hang the fuzzer instead of failing.
        for _ in 0..=data.len() + 1 {
            match reader.next().await {
                Ok(XmlEvent::StreamClose) | Err(_) => return,
                // Serialise what was parsed: the writer must cope with anything the reader
                // accepts.
                Ok(XmlEvent::Element(el)) => {
                    let _ = el.to_xml();
                }
                Ok(XmlEvent::StreamOpen(_)) => {}
            }
        }
        panic!("the reader produced more events than there are input bytes");
    });
});
