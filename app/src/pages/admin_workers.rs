//! Operators: the worker pool of this portal instance, refreshed every second without a
//! reload: each worker's device, model, state, running and waiting sequences, KV-cache blocks,
//! decode tokens per second and latest step time; drain a worker (it takes nothing new), put
//! it back, or restart it (drained, stopped, its model loaded again).

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{DrainWorker, RestartWorker, worker_pool};
use crate::components::form::{FormError, confirm_first, general_error};
use crate::pages::admin::AdminNav;

#[component]
pub fn AdminWorkers() -> impl IntoView {
    let tick = RwSignal::new(0u32);
    let drain = ServerAction::<DrainWorker>::new();
    let restart = ServerAction::<RestartWorker>::new();
    let workers = Resource::new(move || tick.get(), |_| worker_pool());
    // Poll once a second, for as long as the page is open.
    Effect::new(move |_| {
        if workers.get().is_some() {
            set_timeout(
                move || tick.update(|t| *t += 1),
                std::time::Duration::from_secs(1),
            );
        }
    });
    view! {
        <Title text="Workers · Admin · Tokenmill" />
        <h1>"Worker pool"</h1>
        <AdminNav />
        <FormError message=general_error(drain.value()) />
        <FormError message=general_error(restart.value()) />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match workers.await {
                    Ok(list) if list.is_empty() => view! { <p class="empty">"No models are loaded in this instance."</p> }.into_any(),
                    Ok(list) => view! {
                        <table class="list" data-testid="workers">
                            <thead>
                                <tr>
                                    <th>"Model"</th><th>"Device"</th><th>"Memory"</th><th>"State"</th><th>"Running"</th>
                                    <th>"Waiting"</th><th>"KV blocks"</th><th>"Tokens/s"</th><th>"Last step"</th><th>"Generated"</th><th></th>
                                </tr>
                            </thead>
                            <tbody>
                                {list.into_iter().map(|w| {
                                    let draining = w.state == "draining";
                                    let loading = w.state == "loading";
                                    view! {
                                    <tr data-testid=format!("worker-{}", w.model)>
                                        <td>{w.model.clone()}</td>
                                        <td>{w.device}</td>
                                        <td>{w.memory}</td>
                                        <td data-testid="state">{w.state}</td>
                                        <td data-testid="running">{w.running}</td>
                                        <td>{w.waiting}</td>
                                        <td>{format!("{} / {}", w.kv_used, w.kv_total)}</td>
                                        <td data-testid="tokens-per-s">{format!("{:.1}", w.tokens_per_s)}</td>
                                        <td>{format!("{:.2} ms", w.last_step_ms)}</td>
                                        <td data-testid="generated">{w.tokens_generated}</td>
                                        <td>
                                            <ActionForm action=drain attr:class="inline">
                                                <input type="hidden" name="index" value=w.index />
                                                <input type="hidden" name="drain" value=if draining { "0" } else { "1" } />
                                                <button
                                                    type="submit"
                                                    disabled=loading
                                                    on:click=confirm_first(if draining { "Let this worker take new work again?".into() } else { "Drain this worker? It finishes what it runs and takes nothing new.".into() })
                                                >
                                                    {if draining { "Resume" } else { "Drain" }}
                                                </button>
                                            </ActionForm>
                                            <ActionForm action=restart attr:class="inline">
                                                <input type="hidden" name="index" value=w.index />
                                                <button
                                                    type="submit"
                                                    disabled=loading
                                                    on:click=confirm_first("Restart this worker? It is drained, stopped and its model loaded again.".into())
                                                >
                                                    "Restart"
                                                </button>
                                            </ActionForm>
                                        </td>
                                    </tr>
                                }}).collect_view()}
                            </tbody>
                        </table>
                    }.into_any(),
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
    }
}
