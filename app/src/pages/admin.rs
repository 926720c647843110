//! Operators: partner organisations (AI clouds) and their first user.

use leptos::prelude::*;

use crate::components::copy::CopyButton;
use leptos_meta::Title;
use leptos_router::components::A;

use crate::{
    api::{CreatePartner, partners},
    components::form::{
        Choice, FieldError, FormError, field_error, general_error, reset_on_success,
    },
    pages::auth::REGION_OPTIONS,
};

/// Links between the Admin pages.
#[component]
pub fn AdminNav() -> impl IntoView {
    view! {
        <nav class="tabs" aria-label="Admin">
            <A href="/admin" exact=true>"Partners"</A>
            <A href="/admin/factories">"Factories"</A>
            <A href="/admin/programs">"Programs"</A>
            <A href="/admin/organizations">"Organisations"</A>
            <A href="/admin/workers">"Workers"</A>
        </nav>
    }
}

#[component]
pub fn Admin() -> impl IntoView {
    let create = ServerAction::<CreatePartner>::new();
    let value = create.value();
    let list = Resource::new(move || create.version().get(), |_| partners());
    let created = move || value.with(|v| v.as_ref().and_then(|r| r.as_ref().ok().cloned()));
    view! {
        <Title text="Admin · Tokenmill" />
        <h1>"Admin"</h1>
        <AdminNav />
        <h2>"Partners"</h2>
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(list) if list.is_empty() => {
                        view! { <p>"No partner organisations yet."</p> }.into_any()
                    }
                    Ok(list) => {
                        view! {
                            <table class="list" data-testid="partners">
                                <thead>
                                    <tr>
                                        <th>"Name"</th>
                                        <th>"Region"</th>
                                        <th>"Created"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .into_iter()
                                        .map(|p| {
                                            view! {
                                                <tr>
                                                    <td>{p.name}</td>
                                                    <td>{p.region}</td>
                                                    <td>{p.created}</td>
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
        <section class="panel">
            <h2>"Add a partner"</h2>
            <p>"Creates the AI cloud's organisation and an invitation link for its first user, who becomes its owner."</p>
            <ActionForm action=create node_ref=reset_on_success(value)>
                <FormError message=general_error(value) />
                <label for="name">"Partner name"</label>
                <input id="name" name="name" required />
                <FieldError message=field_error(value, "org_name") id="name-error" />
                <Choice
                    label="Region"
                    id="region"
                    name="region"
                    options=&REGION_OPTIONS
                    error=field_error(value, "region")
                />
                <label for="owner_email">"First user's email"</label>
                <input id="owner_email" name="owner_email" type="email" required />
                <FieldError message=field_error(value, "email") id="owner_email-error" />
                <button type="submit" class="primary">"Create partner"</button>
            </ActionForm>
            <Show when=move || created().is_some()>
                <p class="notice" role="status">
                    {move || created().map(|c| format!("{} created. Send its first user this link (shown once): ", c.name))}
                    <code class="link" data-testid="partner-link">{move || created().map(|c| c.link)}</code>
                </p>
                {move || created().map(|c| view! { <CopyButton text=c.link label="Copy link" /> })}
            </Show>
        </section>
    }
}
