//! Models: what can be used, at what list price, served by which factories. Operators set
//! prices here.

use leptos::prelude::*;
use leptos_meta::Title;

use crate::{
    api::{SetModelPrice, me, model_catalog},
    components::form::{FieldError, FormError, field_error, general_error},
};

#[component]
pub fn Models() -> impl IntoView {
    let set_price = ServerAction::<SetModelPrice>::new();
    let catalog = Resource::new(move || set_price.version().get(), |_| model_catalog());
    let profile = Resource::new(|| (), |_| me());
    let result = set_price.value();

    view! {
        <Title text="Models · Tokenmill" />
        <h1>"Models"</h1>
        <p>"List prices per million tokens. Usage is charged for the tokens a request processes."</p>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match catalog.await {
                    Ok(list) if list.is_empty() => {
                        view! { <p class="empty">"No model is priced yet."</p> }.into_any()
                    }
                    Ok(list) => {
                        view! {
                            <table class="list" data-testid="models">
                                <thead>
                                    <tr>
                                        <th>"Model"</th>
                                        <th class="num">"Input / 1M tokens"</th>
                                        <th class="num">"Output / 1M tokens"</th>
                                        <th>"Served by"</th>
                                        <th>"Price set"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .into_iter()
                                        .map(|m| {
                                            let served = if m.factories.is_empty() {
                                                "no factory yet".to_string()
                                            } else {
                                                m.factories.join("; ")
                                            };
                                            view! {
                                                <tr>
                                                    <td>
                                                        <code>{m.model_id}</code>
                                                    </td>
                                                    <td class="num">{m.input_per_mtok}</td>
                                                    <td class="num">{m.output_per_mtok}</td>
                                                    <td>{served}</td>
                                                    <td>{m.updated}</td>
                                                </tr>
                                            }
                                        })
                                        .collect_view()}
                                </tbody>
                            </table>
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
        <Transition fallback=|| ()>
            {move || Suspend::new(async move {
                let operator = matches!(profile.await, Ok(Some(p)) if p.is_operator);
                operator
                    .then(|| {
                        view! {
                            <section class="panel">
                                <h2>"Set a price"</h2>
                                <p>"A new model id adds it; an existing one changes its price."</p>
                                <ActionForm action=set_price>
                                    <FormError message=general_error(result) />
                                    <label for="price-model">"Model id"</label>
                                    <input id="price-model" name="model_id" required />
                                    <FieldError message=field_error(result, "model_id") id="price-model-error" />
                                    <label for="price-input">"Input, dollars per million tokens"</label>
                                    <input id="price-input" name="input_per_mtok" inputmode="decimal" required />
                                    <FieldError message=field_error(result, "input_per_mtok") id="price-input-error" />
                                    <label for="price-output">"Output, dollars per million tokens"</label>
                                    <input id="price-output" name="output_per_mtok" inputmode="decimal" required />
                                    <FieldError message=field_error(result, "output_per_mtok") id="price-output-error" />
                                    <button type="submit" class="primary">"Save price"</button>
                                </ActionForm>
                            </section>
                        }
                    })
            })}
        </Transition>
    }
}
