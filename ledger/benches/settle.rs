//! Settle throughput: how many holds per second the ledger settles (one balanced posting
//! each, plus the release of what was not used), on SQLite and, when `TEST_DATABASE_URL` is
//! set, PostgreSQL. One client in sequence, then 8 concurrent clients.
//!
//! `cargo bench -p ledger --bench settle` (add `TEST_DATABASE_URL=postgres://…` for both).

use std::time::Instant;

use db::testing::TestDb;
use ledger::{AccountKind, AccountSpec, Ledger, Nanos, Posting};

const HOLDS: usize = 2_000;
const CLIENTS: usize = 8;
const HOUR: i64 = 3_600_000;

async fn open(ledger: &Ledger, code: &str, kind: AccountKind) -> String {
    let spec = AccountSpec {
        code: code.into(),
        org_id: None,
        kind,
        expires_at: None,
    };
    ledger.open_account(&spec).await.unwrap().id
}

/// Reserves `HOLDS` holds, then settles them from `clients` tasks; returns settles per second.
async fn run(ledger: &Ledger, tag: &str, clients: usize) -> f64 {
    let stripe = open(ledger, &format!("{tag}:stripe"), AccountKind::External).await;
    let paid = open(ledger, &format!("{tag}:paid"), AccountKind::WalletPaid).await;
    let revenue = open(ledger, &format!("{tag}:revenue"), AccountKind::Revenue).await;
    let topup = Posting::transfer(
        format!("{tag}:topup"),
        "bench",
        "",
        None,
        &stripe,
        &paid,
        Nanos::new(1_000_000_000_000),
    )
    .unwrap();
    ledger.post(&topup).await.unwrap();
    let mut holds = Vec::with_capacity(HOLDS);
    for i in 0..HOLDS {
        let hold = ledger
            .reserve(
                &format!("{tag}:{i}"),
                None,
                std::slice::from_ref(&paid),
                Nanos::new(1_000),
                HOUR,
            )
            .await
            .unwrap();
        holds.push(hold.id);
    }
    let chunks: Vec<Vec<String>> = holds
        .chunks(HOLDS.div_ceil(clients))
        .map(<[String]>::to_vec)
        .collect();
    let start = Instant::now();
    let tasks: Vec<_> = chunks
        .into_iter()
        .map(|chunk| {
            let ledger = ledger.clone();
            let revenue = revenue.clone();
            tokio::spawn(async move {
                for id in chunk {
                    ledger
                        .settle(&id, Nanos::new(700), &revenue, "bench")
                        .await
                        .unwrap();
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let per_second = HOLDS as f64 / start.elapsed().as_secs_f64();
    assert_eq!(ledger.verify().await.unwrap(), Ok(()));
    per_second
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        println!(
            "{HOLDS} holds settled (reserved 1000, settled 700: one posting and a release each)"
        );
        println!(
            "{:<12} {:>14} {:>22}",
            "backend",
            "1 client /s",
            &format!("{CLIENTS} clients /s")
        );
        for t in TestDb::all().await {
            let ledger = Ledger::new(t.db.clone());
            let one = run(&ledger, "seq", 1).await;
            let many = run(&ledger, "par", CLIENTS).await;
            println!(
                "{:<12} {:>14.0} {:>22.0}",
                format!("{:?}", t.db.backend()),
                one,
                many
            );
            t.finish().await;
        }
    });
}
