//! W3C Trace Context (`traceparent`): the trace an event belongs to, carried from the
//! ATS's request (or AMQP message) through RabbitMQ to every webhook request, so that a
//! receiver that traces sees its delivery in the ATS's trace.
//!
//! `00-{trace-id: 32 hex}-{parent-id: 16 hex}-{flags: 2 hex}`; ids of all zeros are
//! invalid, as are upper-case hex and other versions' lengths (version `ff` is refused).

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    pub trace_id: u128,
    pub parent_id: u64,
    pub sampled: bool,
}

impl TraceParent {
    /// The value of a `traceparent` header, if it is one.
    pub fn parse(value: &str) -> Option<Self> {
        let mut parts = value.trim().split('-');
        let (version, trace, parent, flags) =
            (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
        // A later version may add fields after the flags; version 00 has none.
        if version.len() != 2 || version == "ff" || (version == "00" && parts.next().is_some()) {
            return None;
        }
        let lower_hex = |s: &str, len: usize| {
            s.len() == len
                && s.bytes()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        };
        if !(lower_hex(version, 2)
            && lower_hex(trace, 32)
            && lower_hex(parent, 16)
            && lower_hex(flags, 2))
        {
            return None;
        }
        let trace_id = u128::from_str_radix(trace, 16).ok()?;
        let parent_id = u64::from_str_radix(parent, 16).ok()?;
        let flags = u8::from_str_radix(flags, 16).ok()?;
        if trace_id == 0 || parent_id == 0 {
            return None;
        }
        Some(Self {
            trace_id,
            parent_id,
            sampled: flags & 1 == 1,
        })
    }

    /// A new trace, for an event that arrived without one. `random` supplies the ids
    /// (zero draws are replaced: zero ids are invalid).
    pub fn root(random: (u128, u64)) -> Self {
        Self {
            trace_id: random.0.max(1),
            parent_id: random.1.max(1),
            sampled: true,
        }
    }

    /// The same trace, under a new span of ours (`span_id`).
    pub fn child(self, span_id: u64) -> Self {
        Self {
            parent_id: span_id.max(1),
            ..self
        }
    }

    pub fn trace_id_hex(&self) -> String {
        format!("{:032x}", self.trace_id)
    }
}

impl fmt::Display for TraceParent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{:032x}-{:016x}-{:02x}",
            self.trace_id,
            self.parent_id,
            u8::from(self.sampled)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_w3c_example_round_trips() {
        let parsed = TraceParent::parse(EXAMPLE).expect("valid");
        assert_eq!(parsed.trace_id_hex(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(parsed.parent_id, 0x00f0_67aa_0ba9_02b7);
        assert!(parsed.sampled);
        assert_eq!(parsed.to_string(), EXAMPLE);
    }

    #[test]
    fn malformed_values_are_not_trace_contexts() {
        for value in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0g",
        ] {
            assert_eq!(TraceParent::parse(value), None, "{value:?}");
        }
    }

    #[test]
    fn a_child_keeps_the_trace_and_flags_under_a_new_span() {
        let parent = TraceParent::parse(EXAMPLE).expect("valid");
        let child = parent.child(0x1234);
        assert_eq!(child.trace_id, parent.trace_id);
        assert_eq!(child.sampled, parent.sampled);
        assert_eq!(
            child.to_string(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000001234-01"
        );
        assert_eq!(
            TraceParent::root((0, 0)).to_string(),
            "00-00000000000000000000000000000001-0000000000000001-01"
        );
    }
}
