//! Worker tokens on real databases: who may make, see and revoke them, that only a hash is
//! kept, that a token enrols into its own factory only, and that a factory with tokens is a
//! fleet.

use compute::ComputeError;
use testkit::Platform;

db::storage_test!(
    /// The partner's owner makes a token; it enrols into that factory, is listed without its
    /// secret, and once revoked enrols nothing.
    async fn a_token_enrols_into_its_factory_until_revoked(t) {
        let p = Platform::new(&t.db).await;
        let partner = p.partner("Savanna Cloud").await;
        let factory = p.factory(&partner.org_id, "Nairobi 1", "tiny/llama").await;
        assert!(!factory.fleet);

        let (token, secret) = p
            .compute
            .create_worker_token(&partner, &factory.id, "rack 1")
            .await
            .unwrap();
        assert_eq!(compute::worker_token_factory(&secret), Some(factory.id.as_str()));
        assert!(token.display.starts_with("tmw_…"));
        assert!(secret.ends_with(&token.display["tmw_…".len()..]));
        let stored: Vec<(String,)> = db::sqlx::query_as("SELECT token_hash FROM worker_tokens")
            .fetch_all(t.db.pool())
            .await
            .unwrap();
        assert_eq!(stored.len(), 1);
        assert_ne!(stored[0].0, secret, "only a hash is kept");
        assert!(p.compute.factory(&factory.id).await.unwrap().unwrap().fleet);

        let enrolled = p.compute.authenticate_worker(&secret).await.unwrap().unwrap();
        assert_eq!(enrolled.factory_id, factory.id);
        assert_eq!(enrolled.token_id, token.id);
        assert_eq!(enrolled.partner_org_id, partner.org_id);
        let listed = p.compute.worker_tokens(&partner, &factory.id).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert!(listed[0].last_used_at.is_some(), "its use is noted");

        // A token with one character changed, or of the right shape but unknown, enrols
        // nothing.
        let mut wrong = secret.clone();
        let last = wrong.pop().unwrap();
        wrong.push(if last == 'a' { 'b' } else { 'a' });
        assert_eq!(p.compute.authenticate_worker(&wrong).await.unwrap(), None);
        assert_eq!(p.compute.authenticate_worker("tmw_").await.unwrap(), None);

        assert_eq!(
            p.compute.revoked_worker_tokens(std::slice::from_ref(&token.id)).await.unwrap(),
            Vec::<String>::new()
        );
        let revoked = p.compute.revoke_worker_token(&partner, &token.id).await.unwrap();
        assert!(revoked.revoked_at.is_some());
        assert_eq!(p.compute.authenticate_worker(&secret).await.unwrap(), None);
        assert_eq!(
            p.compute.revoked_worker_tokens(std::slice::from_ref(&token.id)).await.unwrap(),
            vec![token.id.clone()]
        );
        // Revoked again: done, nothing changes.
        let again = p.compute.revoke_worker_token(&partner, &token.id).await.unwrap();
        assert_eq!(again.revoked_at, revoked.revoked_at);
        // A factory that had tokens stays a fleet: its jobs never fall back to the portal.
        assert!(p.compute.factory(&factory.id).await.unwrap().unwrap().fleet);
        t.finish().await;
    }
);

db::storage_test!(
    /// Another partner and tenants cannot see, make or revoke a factory's tokens; operators
    /// can; a bad name is refused by field.
    async fn only_the_factorys_partner_and_operators_manage_its_tokens(t) {
        let p = Platform::new(&t.db).await;
        let partner = p.partner("Savanna Cloud").await;
        let other = p.partner("Fjord Compute").await;
        let tenant = p.tenant("dev@startup.example", "startup").await;
        let factory = p.factory(&partner.org_id, "Nairobi 1", "tiny/llama").await;
        for outsider in [&other, &tenant] {
            assert!(matches!(
                p.compute.create_worker_token(outsider, &factory.id, "x").await,
                Err(ComputeError::NotFound)
            ));
            assert!(matches!(
                p.compute.worker_tokens(outsider, &factory.id).await,
                Err(ComputeError::NotFound)
            ));
        }
        let (token, _) = p
            .compute
            .create_worker_token(&p.operator, &factory.id, "by the operator")
            .await
            .unwrap();
        for outsider in [&other, &tenant] {
            assert!(matches!(
                p.compute.revoke_worker_token(outsider, &token.id).await,
                Err(ComputeError::NotFound)
            ));
            assert_eq!(p.compute.visible_worker_tokens(outsider).await.unwrap(), []);
        }
        let theirs = p
            .compute
            .create_worker_token(&p.operator, &p.factory(&other.org_id, "Oslo 1", "tiny/llama").await.id, "x")
            .await
            .unwrap()
            .0;
        assert_eq!(
            p.compute.visible_worker_tokens(&partner).await.unwrap(),
            std::slice::from_ref(&token)
        );
        assert_eq!(
            p.compute.visible_worker_tokens(&other).await.unwrap(),
            std::slice::from_ref(&theirs)
        );
        assert_eq!(
            p.compute.visible_worker_tokens(&p.operator).await.unwrap(),
            [theirs, token.clone()]
        );
        assert!(p.compute.authenticate_worker("tmw_x").await.unwrap().is_none());
        for bad in ["", "   ", "two\nlines", &"n".repeat(65)] {
            assert!(matches!(
                p.compute.create_worker_token(&partner, &factory.id, bad).await,
                Err(ComputeError::Field { field: "name", .. })
            ));
        }
        assert_eq!(p.compute.worker_tokens(&partner, &factory.id).await.unwrap().len(), 1);
        t.finish().await;
    }
);
