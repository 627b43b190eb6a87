//! A sync event ([`crate::domain::SyncEvent`]) as it travels through a stream: its fields as
//! stream entry fields, and back.

use crate::domain::OrderId;
use std::collections::HashMap;

use redis::Value;

pub use crate::domain::{EventKind, SyncEvent};

impl SyncEvent {
    /// The stream entry's fields.
    pub fn fields(&self) -> Vec<(&'static str, String)> {
        let mut fields = vec![
            ("order_id", self.order_id.to_string()),
            ("version", self.version.to_string()),
            ("kind", self.kind.as_str().to_string()),
            ("committed_at_ms", self.committed_at_ms.to_string()),
        ];
        match self.kind {
            EventKind::Retry {
                attempt: Some(attempt),
            } => fields.push(("attempt", attempt.to_string())),
            EventKind::Audit { job } => fields.push(("job", job.to_string())),
            _ => {}
        }
        fields
    }

    /// Reads an entry's fields; `None` for an entry this service did not write.
    pub fn from_fields(fields: &HashMap<String, Value>) -> Option<Self> {
        let text = |name: &str| match fields.get(name)? {
            Value::BulkString(bytes) => std::str::from_utf8(bytes).ok().map(str::to_string),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        };
        let number = |name: &str| text(name)?.parse::<i64>().ok();
        let kind = match text("kind")?.as_str() {
            "change" => EventKind::Change,
            // Entries written before retries carried their attempt have none: honoured as before.
            "retry" => EventKind::Retry {
                attempt: text("attempt").and_then(|a| a.parse().ok()),
            },
            // An instance older than audits drops these as unreadable; the job moves on without
            // them after a while (`crate::engine::jobs`).
            "audit" => EventKind::Audit {
                job: number("job")?,
            },
            _ => return None,
        };
        Some(Self {
            order_id: OrderId::new(number("order_id")?),
            version: number("version")?,
            kind,
            committed_at_ms: number("committed_at_ms")?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_survives_its_round_trip_through_stream_fields() {
        let event = SyncEvent {
            order_id: OrderId::new(42),
            version: 7,
            kind: EventKind::Retry { attempt: Some(3) },
            committed_at_ms: 1_700_000_000_123,
        };
        let fields = event
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(SyncEvent::from_fields(&fields), Some(event));
        let audit = SyncEvent {
            order_id: OrderId::new(42),
            version: 0,
            kind: EventKind::Audit { job: 9 },
            committed_at_ms: 1_700_000_000_123,
        };
        let fields = audit
            .fields()
            .into_iter()
            .map(|(k, v)| (k.to_string(), Value::BulkString(v.into_bytes())))
            .collect();
        assert_eq!(SyncEvent::from_fields(&fields), Some(audit));
    }

    #[test]
    fn a_foreign_entry_is_not_an_event() {
        let mut fields = HashMap::new();
        fields.insert("order_id".to_string(), Value::BulkString(b"x".to_vec()));
        assert_eq!(SyncEvent::from_fields(&fields), None);
    }
}
