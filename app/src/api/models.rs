//! Server functions of the Models page: every priced model with its list prices and the
//! factories that serve it; operators set prices.

use leptos::prelude::*;
use serde::{Deserialize, Serialize};

use crate::AppError;
#[cfg(feature = "ssr")]
use crate::{api::date, ssr::*};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelView {
    pub model_id: String,
    /// Dollars per million input (prompt) tokens, exact.
    pub input_per_mtok: String,
    pub output_per_mtok: String,
    /// "Factory (Partner, region)" for each factory serving the model.
    pub factories: Vec<String>,
    pub updated: String,
}

#[server(endpoint = "model_catalog")]
pub async fn model_catalog() -> Result<Vec<ModelView>, AppError> {
    let app = state()?;
    require_user().await.map_err(with_status)?;
    let compute = app.compute;
    let factories = compute.factories().await.map_err(with_status)?;
    Ok(compute
        .prices()
        .await
        .map_err(with_status)?
        .into_iter()
        .map(|p| ModelView {
            factories: factories
                .iter()
                .filter(|f| f.serves(&p.model_id))
                .map(|f| format!("{} ({}, {})", f.name, f.partner_name, f.region.label()))
                .collect(),
            model_id: p.model_id,
            input_per_mtok: p.input_per_mtok.to_string(),
            output_per_mtok: p.output_per_mtok.to_string(),
            updated: date(p.updated_at),
        })
        .collect())
}

#[server(endpoint = "set_model_price")]
pub async fn set_model_price(
    model_id: String,
    input_per_mtok: String,
    output_per_mtok: String,
) -> Result<(), AppError> {
    let (app, user) = signed_in().await?;
    let price = |p: &compute::ModelPrice| {
        serde_json::json!({
            "input_per_mtok": p.input_per_mtok.to_string(),
            "output_per_mtok": p.output_per_mtok.to_string(),
        })
    };
    let before = app
        .compute
        .prices()
        .await
        .map_err(with_status)?
        .iter()
        .find(|p| p.model_id == model_id)
        .map(price);
    let set = app
        .compute
        .set_price(&user, &model_id, &input_per_mtok, &output_per_mtok)
        .await
        .map_err(with_status)?;
    audited(
        &app,
        &user,
        accounts::Change {
            action: "model_price.set",
            target_kind: "model",
            target_id: &set.model_id,
            target_org_id: None,
            before: before.and_then(audit_json),
            after: audit_json(price(&set)),
        },
    )
    .await;
    Ok(())
}
