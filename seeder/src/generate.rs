//! Fake orders with the reference seeds' distributions: status from delivered/pending/canceled,
//! placed within the last 100 days, delivered 2 to 7 days after placing (only when delivered),
//! amount 100..=9999, tax 18% of that same amount (the reference took 18% of a second random
//! amount, a bug), and a fake street address, city, state, country and postcode.

use chrono::{DateTime, Duration, Utc};
use fake::faker::address::en::{
    BuildingNumber, CityName, CountryName, StateName, StreetName, ZipCode,
};
use fake::Fake;
use rand::{Rng, RngExt};

/// One batch of orders, column by column, as PostgreSQL's `unnest` takes them.
#[derive(Default)]
pub struct OrderColumns {
    pub status: Vec<&'static str>,
    pub placed_at: Vec<DateTime<Utc>>,
    pub delivered_at: Vec<Option<DateTime<Utc>>>,
    pub amount: Vec<i64>,
    pub tax: Vec<i64>,
    pub street_address: Vec<String>,
    pub city: Vec<String>,
    pub state: Vec<String>,
    pub country: Vec<String>,
    pub pincode: Vec<String>,
}

impl OrderColumns {
    pub fn len(&self) -> usize {
        self.status.len()
    }

    pub fn is_empty(&self) -> bool {
        self.status.is_empty()
    }

    /// `count` fake orders placed before `now`.
    pub fn fake(count: usize, now: DateTime<Utc>, rng: &mut impl Rng) -> Self {
        let mut columns = Self::default();
        for _ in 0..count {
            let status = ["delivered", "pending", "canceled"][rng.random_range(0..3)];
            let placed_at = now - Duration::seconds(rng.random_range(0..100 * 86_400));
            let delivered_at = (status == "delivered")
                .then(|| placed_at + Duration::days(rng.random_range(2..=7)));
            let amount: i64 = rng.random_range(100..=9999);
            columns.status.push(status);
            columns.placed_at.push(placed_at);
            columns.delivered_at.push(delivered_at);
            columns.amount.push(amount);
            columns.tax.push((amount * 18 + 50) / 100);
            let building: String = BuildingNumber().fake_with_rng(rng);
            let street: String = StreetName().fake_with_rng(rng);
            columns.street_address.push(format!("{building} {street}"));
            columns.city.push(CityName().fake_with_rng(rng));
            columns.state.push(StateName().fake_with_rng(rng));
            columns.country.push(CountryName().fake_with_rng(rng));
            // fake's ZIP codes drop leading zeros ("160"); pad them back to five digits.
            let zip: String = ZipCode().fake_with_rng(rng);
            columns.pincode.push(format!("{zip:0>5}"));
        }
        columns
    }
}

#[cfg(test)]
mod tests {
    use order_sync::domain::{AddressLine, Money, Pincode};

    use super::*;

    #[test]
    fn seeded_orders_are_valid_orders() {
        let now = Utc::now();
        let orders = OrderColumns::fake(2_000, now, &mut rand::rng());
        for i in 0..orders.len() {
            assert!(Money::new(orders.amount[i]).is_ok() && Money::new(orders.tax[i]).is_ok());
            assert_eq!(orders.tax[i], (orders.amount[i] * 18 + 50) / 100);
            for line in [
                &orders.street_address[i],
                &orders.city[i],
                &orders.state[i],
                &orders.country[i],
            ] {
                assert!(AddressLine::new(line).is_ok(), "{line:?}");
            }
            assert!(
                Pincode::new(&orders.pincode[i]).is_ok(),
                "{:?}",
                orders.pincode[i]
            );
            let age = now - orders.placed_at[i];
            assert!(age >= Duration::zero() && age <= Duration::days(100));
            match orders.delivered_at[i] {
                Some(at) => {
                    assert_eq!(orders.status[i], "delivered");
                    let days = (at - orders.placed_at[i]).num_days();
                    assert!((2..=7).contains(&days), "{days}");
                }
                None => assert_ne!(orders.status[i], "delivered"),
            }
        }
    }
}
