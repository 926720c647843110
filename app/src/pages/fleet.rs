//! The Fleet page (partners and operators): the worker nodes of the factories the user may
//! see, refreshed every second (node, factory, version, devices, state, each engine's model,
//! load and KV use, tokens/s, last heartbeat), drain / put back / restart of an engine, and
//! each factory's worker tokens (made, shown once, revoked).

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{
    ControlNode, CreateWorkerToken, FleetFactory, NodeRow, RevokeWorkerToken, fleet_view,
};
use crate::components::copy::CopyButton;
use crate::components::form::{FormError, confirm_first, general_error};

#[component]
pub fn Fleet() -> impl IntoView {
    let tick = RwSignal::new(0u32);
    let create = ServerAction::<CreateWorkerToken>::new();
    let revoke = ServerAction::<RevokeWorkerToken>::new();
    let control = ServerAction::<ControlNode>::new();
    let view_ = Resource::new(
        move || (tick.get(), create.version().get(), revoke.version().get()),
        |_| fleet_view(),
    );
    // Poll once a second, for as long as the page is open.
    Effect::new(move |_| {
        if view_.get().is_some() {
            set_timeout(
                move || tick.update(|t| *t += 1),
                std::time::Duration::from_secs(1),
            );
        }
    });
    let created = create.value();
    let fresh = move || created.with(|v| v.as_ref().and_then(|r| r.as_ref().ok().cloned()));
    view! {
        <Title text="Fleet · Tokenmill" />
        <h1>"Fleet"</h1>
        <p>
            "Worker nodes run a factory's jobs once the factory has a worker token: start "
            <code>"tokenmill worker"</code> " with " <code>"TOKENMILL_WORKER_TOKEN"</code>
            " and the fleet's " <code>"TOKENMILL_NATS_URL"</code> "."
        </p>
        <Show when=move || fresh().is_some()>
            <section class="panel notice" role="status">
                <p>
                    "Worker token for " <strong>{move || fresh().map(|k| k.factory)}</strong>
                    " created. Copy it now: it is shown only once."
                </p>
                <code class="link" data-testid="new-worker-token">
                    {move || fresh().map(|k| k.secret)}
                </code>
                {move || fresh().map(|k| view! { <CopyButton text=k.secret label="Copy token" /> })}
            </section>
        </Show>
        <FormError message=general_error(create.value()) />
        <FormError message=general_error(revoke.value()) />
        <FormError message=general_error(control.value()) />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match view_.await {
                    Ok(page) => view! {
                        <h2>"Nodes"</h2>
                        {if !page.connected {
                            view! { <p class="empty">"This portal is not connected to a fleet (TOKENMILL_NATS_URL is not set)."</p> }.into_any()
                        } else if page.nodes.is_empty() {
                            view! { <p class="empty">"No worker node has joined yet."</p> }.into_any()
                        } else {
                            view! { <NodeTable nodes=page.nodes control=control /> }.into_any()
                        }}
                        <h2>"Worker tokens"</h2>
                        {page.factories.into_iter().map(|f| view! { <FactoryTokens factory=f create=create revoke=revoke /> }).collect_view()}
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}

#[component]
fn NodeTable(nodes: Vec<NodeRow>, control: ServerAction<ControlNode>) -> impl IntoView {
    view! {
        <table class="list" data-testid="nodes">
            <thead>
                <tr>
                    <th>"Node"</th><th>"Factory"</th><th>"Version"</th><th>"Devices"</th><th>"State"</th>
                    <th>"Engines"</th><th>"Tokens/s"</th><th>"Last heartbeat"</th>
                </tr>
            </thead>
            <tbody>
                {nodes.into_iter().map(|n| {
                    let (factory_id, node) = (n.factory_id.clone(), n.node.clone());
                    view! {
                        <tr data-testid=format!("node-{}", n.node)>
                            <td>{n.node.clone()}</td>
                            <td>{n.factory}</td>
                            <td>{n.version}</td>
                            <td>{n.devices}</td>
                            <td data-testid="state">{n.state}</td>
                            <td>
                                {n.engines.into_iter().map(|e| {
                                    let draining = e.state == "draining";
                                    let command = if draining { "resume" } else { "drain" };
                                    let (f1, n1) = (factory_id.clone(), node.clone());
                                    let (f2, n2) = (factory_id.clone(), node.clone());
                                    view! {
                                        <div class="engine">
                                            {format!("{} on {}: {}, {} running, {} waiting, KV {}", e.model, e.device, e.state, e.running, e.waiting, e.kv)}
                                            <ActionForm action=control attr:class="inline">
                                                <input type="hidden" name="factory_id" value=f1 />
                                                <input type="hidden" name="node" value=n1 />
                                                <input type="hidden" name="index" value=e.index />
                                                <input type="hidden" name="command" value=command />
                                                <button type="submit">{if draining { "Put back" } else { "Drain" }}</button>
                                            </ActionForm>
                                            <ActionForm action=control attr:class="inline">
                                                <input type="hidden" name="factory_id" value=f2 />
                                                <input type="hidden" name="node" value=n2 />
                                                <input type="hidden" name="index" value=e.index />
                                                <input type="hidden" name="command" value="restart" />
                                                <button
                                                    type="submit"
                                                    on:click=confirm_first("Restart this engine? It is drained, stopped and its model loaded again.".into())
                                                >
                                                    "Restart"
                                                </button>
                                            </ActionForm>
                                        </div>
                                    }
                                }).collect_view()}
                            </td>
                            <td data-testid="tokens-per-s">{format!("{:.1}", n.tokens_per_s)}</td>
                            <td>{format!("{:.1} s ago", n.seen_secs_ago)}</td>
                        </tr>
                    }
                }).collect_view()}
            </tbody>
        </table>
    }
}

#[component]
fn FactoryTokens(
    factory: FleetFactory,
    create: ServerAction<CreateWorkerToken>,
    revoke: ServerAction<RevokeWorkerToken>,
) -> impl IntoView {
    let manage = factory.manage;
    let factory_id = factory.id.clone();
    view! {
        <section class="panel" data-testid=format!("tokens-{}", factory.name)>
            <h3>{factory.name.clone()} " · " {factory.partner.clone()}</h3>
            {if factory.tokens.is_empty() {
                view! { <p class="empty">"No worker tokens: its jobs run on the portal's own pool."</p> }.into_any()
            } else {
                view! {
                    <table class="list">
                        <thead><tr><th>"Name"</th><th>"Token"</th><th>"Created"</th><th>"Last used"</th><th>"Status"</th><th></th></tr></thead>
                        <tbody>
                            {factory.tokens.into_iter().map(|t| {
                                let revoked = t.revoked.is_some();
                                let token_id = t.id.clone();
                                view! {
                                    <tr>
                                        <td>{t.name}</td>
                                        <td><code>{t.display}</code></td>
                                        <td>{t.created}</td>
                                        <td>{t.last_used.unwrap_or_else(|| "never".into())}</td>
                                        <td>{t.revoked.map_or_else(|| "active".to_string(), |r| format!("revoked {r}"))}</td>
                                        <td>
                                            {(manage && !revoked).then(|| view! {
                                                <ActionForm action=revoke attr:class="inline">
                                                    <input type="hidden" name="token_id" value=token_id />
                                                    <button
                                                        type="submit"
                                                        on:click=confirm_first("Revoke this token? Its nodes stop receiving jobs at once.".into())
                                                    >
                                                        "Revoke"
                                                    </button>
                                                </ActionForm>
                                            })}
                                        </td>
                                    </tr>
                                }
                            }).collect_view()}
                        </tbody>
                    </table>
                }.into_any()
            }}
            {manage.then(|| view! {
                <ActionForm action=create attr:class="inline">
                    <input type="hidden" name="factory_id" value=factory_id />
                    <label>"New token " <input name="name" required maxlength="64" placeholder="rack-1" /></label>
                    <button type="submit">"Create worker token"</button>
                </ActionForm>
            })}
        </section>
    }
}
