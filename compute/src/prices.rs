//! Model list prices: what a million input and a million output tokens of a model cost, set by
//! operators. A model without a price is not sold.

use accounts::User;
use db::{now_ms, sqlx::Row};
use ledger::Nanos;

use crate::types::parse_model_id;
use crate::{Compute, ComputeError, field};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelPrice {
    pub model_id: String,
    pub input_per_mtok: Nanos,
    pub output_per_mtok: Nanos,
    pub updated_at: i64,
}

/// The most a million tokens may be priced at: a typo guard, far above any real price.
const MAX_PER_MTOK: i64 = 1_000 * 1_000_000_000;

fn price_field(name: &'static str, text: &str) -> Result<Nanos, ComputeError> {
    let bad = || {
        field(
            name,
            "Enter a price in dollars per million tokens, such as 0.15 (0 to 1000).",
        )
    };
    let n = Nanos::parse_dollars(text).map_err(|_| bad())?;
    if n.get() < 0 || n.get() > MAX_PER_MTOK {
        return Err(bad());
    }
    Ok(n)
}

impl Compute {
    /// Sets (or changes) a model's price. Operators only.
    pub async fn set_price(
        &self,
        actor: &User,
        model_id: &str,
        input_per_mtok: &str,
        output_per_mtok: &str,
    ) -> Result<ModelPrice, ComputeError> {
        if !actor.is_operator {
            return Err(ComputeError::Forbidden);
        }
        let model_id = parse_model_id(model_id).map_err(|_| {
            field(
                "model_id",
                "Model ids use letters, digits and . - _ / : (up to 100 characters).",
            )
        })?;
        let price = ModelPrice {
            model_id,
            input_per_mtok: price_field("input_per_mtok", input_per_mtok)?,
            output_per_mtok: price_field("output_per_mtok", output_per_mtok)?,
            updated_at: now_ms(),
        };
        db::sqlx::query(
            "INSERT INTO model_prices (model_id, input_nanos_per_mtok, output_nanos_per_mtok, updated_at, updated_by) \
             VALUES ($1, $2, $3, $4, $5) \
             ON CONFLICT (model_id) DO UPDATE SET input_nanos_per_mtok = excluded.input_nanos_per_mtok, \
             output_nanos_per_mtok = excluded.output_nanos_per_mtok, updated_at = excluded.updated_at, \
             updated_by = excluded.updated_by",
        )
        .bind(&price.model_id)
        .bind(price.input_per_mtok.get())
        .bind(price.output_per_mtok.get())
        .bind(price.updated_at)
        .bind(&actor.id)
        .execute(self.db.pool())
        .await?;
        self.changed();
        Ok(price)
    }

    /// Every priced model, by id.
    pub async fn prices(&self) -> Result<Vec<ModelPrice>, ComputeError> {
        let rows = db::sqlx::query(
            "SELECT model_id, input_nanos_per_mtok, output_nanos_per_mtok, updated_at \
             FROM model_prices ORDER BY model_id",
        )
        .fetch_all(self.db.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ModelPrice {
                    model_id: r.try_get("model_id")?,
                    input_per_mtok: Nanos::new(r.try_get("input_nanos_per_mtok")?),
                    output_per_mtok: Nanos::new(r.try_get("output_nanos_per_mtok")?),
                    updated_at: r.try_get("updated_at")?,
                })
            })
            .collect()
    }

    pub async fn price(&self, model_id: &str) -> Result<Option<ModelPrice>, ComputeError> {
        Ok(self
            .prices()
            .await?
            .into_iter()
            .find(|p| p.model_id == model_id))
    }
}
