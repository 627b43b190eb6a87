//! The body of `POST`/`PUT /v1/orders`: the reference service's `Transform#external_payload`,
//! plus `id` and `version` so the external side can order and deduplicate what it receives.

use chrono::{DateTime, Utc};
use serde::Serialize;

/// What the external API receives for one order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExternalOrder {
    pub id: i64,
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

/// The order fields the payload is made from.
#[derive(Debug, Clone)]
pub struct OrderSnapshot {
    pub id: i64,
    pub version: i64,
    pub status: String,
    pub placed_at: DateTime<Utc>,
    pub delivered_at: Option<DateTime<Utc>>,
    pub amount: i64,
    pub tax: i64,
    pub street_address: String,
    pub city: String,
    pub state: String,
    pub country: String,
    pub pincode: String,
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
            status: order.status.clone(),
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
    use serde_json::json;

    use super::*;

    #[test]
    fn the_payload_follows_the_reference_transform() {
        let at = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc);
        let order = OrderSnapshot {
            id: 7,
            version: 3,
            status: "delivered".into(),
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
