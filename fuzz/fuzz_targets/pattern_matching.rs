//! `pattern\nevent_type`; see `hookline_shared::properties::pattern_matching`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| hookline_shared::properties::pattern_matching(data));
