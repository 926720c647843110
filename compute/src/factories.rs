//! Factories: created by operators for a partner; listed to everyone signed in (tenants choose
//! one when they ask for capacity).

use accounts::{OrgKind, Region, User};
use db::{new_id, now_ms, sqlx::Row};

use crate::types::{GpuClass, parse_model_id};
use crate::{Compute, ComputeError, field};

/// What an operator fills in.
#[derive(Debug, Clone, Default)]
pub struct FactorySpec {
    pub partner_org_id: String,
    pub name: String,
    pub region: String,
    pub gpu_class: String,
    /// Model ids, separated by commas or new lines.
    pub models: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Factory {
    pub id: String,
    pub partner_org_id: String,
    pub partner_name: String,
    pub name: String,
    pub region: Region,
    pub gpu_class: GpuClass,
    pub models: Vec<String>,
    pub created_at: i64,
    /// Worker tokens were ever made for it: its jobs run only on its own enrolled nodes,
    /// never on the portal's in-process pool.
    pub fleet: bool,
}

impl Factory {
    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }
}

const FACTORY_SELECT: &str = "SELECT f.id, f.partner_org_id, o.name AS partner_name, f.name, \
     f.region, f.gpu_class, f.models, f.created_at, \
     CAST(CASE WHEN EXISTS (SELECT 1 FROM worker_tokens t WHERE t.factory_id = f.id) \
     THEN 1 ELSE 0 END AS BIGINT) AS fleet \
     FROM factories f JOIN organizations o ON o.id = f.partner_org_id";

fn factory_from_row(r: &db::sqlx::any::AnyRow) -> Result<Factory, ComputeError> {
    let region: String = r.try_get("region")?;
    let gpu: String = r.try_get("gpu_class")?;
    // Only this crate writes these columns, from the same lists: anything else is a stored
    // row this build cannot read, not a factory in some default place.
    let unreadable = |what: &str, value: &str| {
        ComputeError::from(db::sqlx::Error::Decode(
            format!("factory row with an unknown {what} {value:?}").into(),
        ))
    };
    let models: String = r.try_get("models")?;
    Ok(Factory {
        id: r.try_get("id")?,
        partner_org_id: r.try_get("partner_org_id")?,
        partner_name: r.try_get("partner_name")?,
        name: r.try_get("name")?,
        region: Region::from_code(&region).ok_or_else(|| unreadable("region", &region))?,
        gpu_class: GpuClass::from_code(&gpu).ok_or_else(|| unreadable("GPU class", &gpu))?,
        models: models
            .split(',')
            .filter(|m| !m.is_empty())
            .map(str::to_string)
            .collect(),
        created_at: r.try_get("created_at")?,
        fleet: r.try_get::<i64, _>("fleet")? == 1,
    })
}

impl Compute {
    pub async fn create_factory(
        &self,
        actor: &User,
        spec: &FactorySpec,
    ) -> Result<Factory, ComputeError> {
        if !actor.is_operator {
            return Err(ComputeError::Forbidden);
        }
        let partner = self
            .accounts
            .org(spec.partner_org_id.trim())
            .await?
            .filter(|o| o.kind == OrgKind::Partner)
            .ok_or_else(|| field("partner", "Choose a partner."))?;
        let name = spec.name.trim();
        if !(2..=80).contains(&name.chars().count()) {
            return Err(field("name", "Use 2 to 80 characters for the name."));
        }
        let region = Region::from_code(spec.region.trim())
            .ok_or_else(|| field("region", "Choose a region."))?;
        let gpu_class = GpuClass::from_code(&spec.gpu_class)
            .ok_or_else(|| field("gpu_class", "Choose a GPU class."))?;
        let mut models = Vec::new();
        for m in spec.models.split([',', '\n']).map(str::trim) {
            if m.is_empty() {
                continue;
            }
            let id = parse_model_id(m)?;
            if !models.contains(&id) {
                models.push(id);
            }
        }
        if models.is_empty() {
            return Err(field(
                "models",
                "Name at least one model the factory serves.",
            ));
        }
        let id = new_id();
        let inserted = db::sqlx::query(
            "INSERT INTO factories (id, partner_org_id, name, region, gpu_class, models, created_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(&id)
        .bind(&partner.id)
        .bind(name)
        .bind(region.code())
        .bind(gpu_class.code())
        .bind(models.join(","))
        .bind(now_ms())
        .execute(self.db.pool())
        .await;
        match inserted {
            Ok(_) => {}
            Err(e) if db::is_unique_violation(&e) => {
                return Err(field("name", "A factory with this name exists."));
            }
            Err(e) => return Err(e.into()),
        }
        self.changed();
        tracing::info!(factory = id, partner = partner.id, "factory created");
        self.factory(&id).await?.ok_or(ComputeError::NotFound)
    }

    pub async fn factory(&self, id: &str) -> Result<Option<Factory>, ComputeError> {
        let row = db::sqlx::query(&format!("{FACTORY_SELECT} WHERE f.id = $1"))
            .bind(id)
            .fetch_optional(self.db.pool())
            .await?;
        row.as_ref().map(factory_from_row).transpose()
    }

    pub async fn factories(&self) -> Result<Vec<Factory>, ComputeError> {
        let rows = db::sqlx::query(&format!("{FACTORY_SELECT} ORDER BY f.name"))
            .fetch_all(self.db.pool())
            .await?;
        rows.iter().map(factory_from_row).collect()
    }
}
