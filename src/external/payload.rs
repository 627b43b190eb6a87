//! The body of `POST`/`PUT /v1/orders`: the reference service's `Transform#external_payload`,
//! plus `id` and `version` so the external side can order and deduplicate what it receives.

use crate::domain::OrderId;
use serde::Serialize;

use crate::domain::OrderSnapshot;

/// What the external API receives for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalOrder {
    pub id: OrderId,
    pub version: i64,
    pub status: String,
    /// `placed_at` as `dd/mm/yyyy`.
    pub purchased_date: String,
    /// `delivered_at` in epoch seconds, or `""` when not delivered (the reference's mixed type).
    pub delivery_date: serde_json::Value,
    /// `amount + tax`, in minor units.
    pub cost: i64,
    /// Street, city, state, pincode and country joined by `,`, blanks left out.
    pub address: String,
}

impl From<&OrderSnapshot> for ExternalOrder {
    fn from(order: &OrderSnapshot) -> Self {
        let address = [
            &order.street_address,
            &order.city,
            &order.state,
            &order.pincode,
            &order.country,
        ]
        .into_iter()
        .map(|part| part.trim())
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(",");
        Self {
            id: order.id,
            version: order.version,
            status: order.status.to_string(),
            purchased_date: order.placed_at.format("%d/%m/%Y").to_string(),
            delivery_date: order.delivered_at.map_or_else(
                || serde_json::Value::from(""),
                |at| serde_json::Value::from(at.timestamp()),
            ),
            cost: order.amount.saturating_add(order.tax),
            address,
        }
    }
}

#[cfg(test)]
mod tests {
    use chrono::{DateTime, Utc};
    use serde_json::json;

    use super::*;
    use crate::domain::OrderStatus;

    #[test]
    fn the_payload_follows_the_reference_transform() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let order = OrderSnapshot {
            id: OrderId::new(7),
            version: 3,
            status: OrderStatus::Delivered,
            placed_at: at("2025-06-03T23:30:00Z"),
            delivered_at: Some(at("2025-06-05T00:00:00Z")),
            amount: 1000,
            tax: 180,
            street_address: "12 MG Road".into(),
            city: "Pune".into(),
            state: " ".into(),
            country: "India".into(),
            pincode: "011001".into(),
        };
        let body = serde_json::to_value(ExternalOrder::from(&order)).unwrap();
        assert_eq!(
            body,
            json!({"id": 7, "version": 3, "status": "delivered", "purchased_date": "03/06/2025",
                   "delivery_date": 1749081600, "cost": 1180, "address": "12 MG Road,Pune,011001,India"})
        );
        let pending = OrderSnapshot {
            delivered_at: None,
            ..order
        };
        assert_eq!(
            serde_json::to_value(ExternalOrder::from(&pending)).unwrap()["delivery_date"],
            json!("")
        );
    }
}
