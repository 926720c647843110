//! Members of the organisation; owners invite (a link to pass on) and remove.

use leptos::prelude::*;

use crate::components::copy::CopyButton;
use leptos_meta::Title;

use crate::{
    api::{Invite, RemoveMember, RevokeInvitation, team},
    components::form::{
        FieldError, FormError, confirm_first, field_error, general_error, reset_on_success,
    },
};

#[allow(
    clippy::too_many_lines,
    reason = "one page's markup, in the order it renders; its parts are components already"
)]
#[component]
pub fn Members() -> impl IntoView {
    let invite = ServerAction::<Invite>::new();
    let remove = ServerAction::<RemoveMember>::new();
    let revoke = ServerAction::<RevokeInvitation>::new();
    let team = Resource::new(
        move || {
            (
                invite.version().get(),
                remove.version().get(),
                revoke.version().get(),
            )
        },
        |_| team(),
    );
    let invite_value = invite.value();
    let link = move || invite_value.with(|v| v.as_ref().and_then(|r| r.as_ref().ok().cloned()));
    let remove_error = general_error(remove.value());
    let revoke_error = general_error(revoke.value());

    view! {
        <Title text="Members · Tokenmill" />
        <h1>"Members"</h1>
        <FormError message=remove_error />
        <FormError message=revoke_error />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match team.await {
                    Ok(team) => {
                        let can_manage = team.can_manage;
                        let has_invitations = !team.invitations.is_empty();
                        view! {
                            <table class="list" data-testid="members">
                                <thead>
                                    <tr>
                                        <th>"Email"</th>
                                        <th>"Role"</th>
                                        <th>"Joined"</th>
                                        <th></th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {team
                                        .members
                                        .into_iter()
                                        .map(|m| {
                                            let removable = can_manage && !m.is_you;
                                            let id = m.id.clone();
                                            view! {
                                                <tr>
                                                    <td>{m.email.clone()}</td>
                                                    <td>{m.role.clone()}</td>
                                                    <td>{m.joined.clone()}</td>
                                                    <td>
                                                        {removable
                                                            .then(|| {
                                                                view! {
                                                                    <ActionForm action=remove>
                                                                        <input type="hidden" name="id" value=id />
                                                                        <button
                                                                            type="submit"
                                                                            class="danger"
                                                                            on:click=confirm_first("Remove this member? Their sessions end and every API key they made is revoked.".into())
                                                                        >
                                                                            "Remove"
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
                            <Show when=move || can_manage && has_invitations>
                                <h2>"Open invitations"</h2>
                                <table class="list" data-testid="invitations">
                                    <thead>
                                        <tr>
                                            <th>"Email"</th>
                                            <th>"Role"</th>
                                            <th>"Expires"</th>
                                            <th></th>
                                        </tr>
                                    </thead>
                                    <tbody>
                                        {team
                                            .invitations
                                            .clone()
                                            .into_iter()
                                            .map(|i| {
                                                view! {
                                                    <tr>
                                                        <td>{i.email}</td>
                                                        <td>{i.role}</td>
                                                        <td>{i.expires}</td>
                                                        <td>
                                                            <ActionForm action=revoke>
                                                                <input type="hidden" name="id" value=i.id />
                                                                <button
                                                                    type="submit"
                                                                    on:click=confirm_first("Revoke this invitation? Its link stops working.".into())
                                                                >
                                                                    "Revoke"
                                                                </button>
                                                            </ActionForm>
                                                        </td>
                                                    </tr>
                                                }
                                            })
                                            .collect_view()}
                                    </tbody>
                                </table>
                            </Show>
                            <Show when=move || can_manage>
                                <section class="panel">
                                    <h2>"Invite a member"</h2>
                                    <p>
                                        "You will get a link to pass on. It works once, for 7 days."
                                    </p>
                                    <ActionForm action=invite node_ref=reset_on_success(invite_value)>
                                        <FormError message=general_error(invite_value) />
                                        <label for="invite-email">"Email"</label>
                                        <input id="invite-email" name="email" type="email" required />
                                        <FieldError
                                            message=field_error(invite_value, "email")
                                            id="invite-email-error"
                                        />
                                        <label for="invite-role">"Role"</label>
                                        <select id="invite-role" name="role">
                                            <option value="member">"Member"</option>
                                            <option value="owner">"Owner"</option>
                                        </select>
                                        <button type="submit" class="primary">"Create invitation"</button>
                                    </ActionForm>
                                </section>
                            </Show>
                        }
                            .into_any()
                    }
                    Err(e) => view! { <p class="form-error">{e.to_string()}</p> }.into_any(),
                }
            })}
        </Transition>
        <Show when=move || link().is_some()>
            <section class="panel notice" role="status">
                <p>
                    "Invitation for " <strong>{move || link().map(|l| l.email)}</strong>
                    ". Copy this link and send it to them; it is shown only once:"
                </p>
                <code class="link" data-testid="invite-link">
                    {move || link().map(|l| l.link)}
                </code>
                {move || link().map(|l| view! { <CopyButton text=l.link label="Copy link" /> })}
                <p class="hint">"We also sent it to them by email."</p>
            </section>
        </Show>
    }
}
