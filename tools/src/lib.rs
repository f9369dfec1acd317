//! Companions to Hookline: the example receiver and the benchmark. Not part of the
//! service; they show and measure it. The library holds what the benchmark shares with
//! the end-to-end tests: reading a `/metrics` answer.

pub mod scrape;
