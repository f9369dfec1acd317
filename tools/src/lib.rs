//! Companions to Hookline: the example receiver and the benchmark. Not part of the
//! service; they show and measure it.
