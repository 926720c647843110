//! API keys: create one (shown once), see each key's prefix, age, expiry and last use, revoke.

use leptos::prelude::*;

use crate::components::copy::CopyButton;
use leptos_meta::Title;

use crate::{
    api::{CreateApiKey, RevokeApiKey, api_keys},
    components::form::{
        FieldError, FormError, confirm_first, field_error, general_error, reset_on_success,
    },
};

#[allow(
    clippy::too_many_lines,
    reason = "one page's markup, in the order it renders; its parts are components already"
)]
#[component]
pub fn Keys() -> impl IntoView {
    let create = ServerAction::<CreateApiKey>::new();
    let revoke = ServerAction::<RevokeApiKey>::new();
    let keys = Resource::new(
        move || (create.version().get(), revoke.version().get()),
        |_| api_keys(),
    );
    let created = create.value();
    let fresh = move || created.with(|v| v.as_ref().and_then(|r| r.as_ref().ok().cloned()));
    let revoke_error = general_error(revoke.value());

    view! {
        <Title text="API keys · Tokenmill" />
        <h1>"API keys"</h1>
        <p>
            "Keys authenticate calls to the OpenAI-compatible API under " <code>"/v1"</code>
            " as your organisation: send " <code>"Authorization: Bearer <key>"</code> "."
        </p>
        <Show when=move || fresh().is_some()>
            <section class="panel notice" role="status">
                <p>
                    "Key " <strong>{move || fresh().map(|k| k.name)}</strong>
                    " created. Copy it now: it is shown only once and cannot be recovered."
                </p>
                <code class="link" data-testid="new-key">
                    {move || fresh().map(|k| k.secret)}
                </code>
                {move || fresh().map(|k| view! { <CopyButton text=k.secret label="Copy key" /> })}
            </section>
        </Show>
        <FormError message=revoke_error />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match keys.await {
                    Ok(list) if list.is_empty() => {
                        view! { <p class="empty">"No keys yet."</p> }.into_any()
                    }
                    Ok(list) => {
                        view! {
                            <table class="list" data-testid="keys">
                                <thead>
                                    <tr>
                                        <th>"Name"</th>
                                        <th>"Key"</th>
                                        <th>"Created"</th>
                                        <th>"Expires"</th>
                                        <th>"Last used"</th>
                                        <th>"Status"</th>
                                        <th></th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .into_iter()
                                        .map(|k| {
                                            let active = k.status == "active";
                                            let id = k.id.clone();
                                            view! {
                                                <tr>
                                                    <td>{k.name}</td>
                                                    <td>
                                                        <code>{k.display}</code>
                                                    </td>
                                                    <td>{k.created}</td>
                                                    <td>{k.expires.unwrap_or_else(|| "never".into())}</td>
                                                    <td>{k.last_used.unwrap_or_else(|| "never".into())}</td>
                                                    <td>{k.status}</td>
                                                    <td>
                                                        {active
                                                            .then(|| {
                                                                view! {
                                                                    <ActionForm action=revoke>
                                                                        <input type="hidden" name="id" value=id />
                                                                        <button
                                                                            type="submit"
                                                                            class="danger"
                                                                            on:click=confirm_first("Revoke this key? Requests that use it are refused from now on; this cannot be undone.".into())
                                                                        >
                                                                            "Revoke"
                                                                        </button>
                                                                    </ActionForm>
                                                                }
                                                            })}
                                                    </td>
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
            <h2>"Create a key"</h2>
            <ActionForm action=create node_ref=reset_on_success(create.value())>
                <FormError message=general_error(created) />
                <label for="key-name">"Name"</label>
                <input id="key-name" name="name" maxlength="64" required />
                <label for="key-expiry">"Expires after (days, empty for never)"</label>
                <input id="key-expiry" name="expires_in_days" inputmode="numeric" />
                <FieldError message=field_error(created, "expires_in_days") id="key-expiry-error" />
                <button type="submit" class="primary">"Create key"</button>
            </ActionForm>
        </section>
    }
}
