//! Any bytes as an AMQP message body; see `hookline_shared::properties::event_parsing`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookline_shared::properties::event_parsing(data));
