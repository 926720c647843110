//! Operators: partners' factories (region, GPU class, the models they serve).

use leptos::prelude::*;
use leptos_meta::Title;

use crate::api::{CreateFactory, factories};
use crate::components::form::{
    Choice, FieldError, FormError, field_error, general_error, reset_on_success,
};
use crate::components::partner_options::PartnerOptions;
use crate::pages::admin::AdminNav;
use crate::pages::auth::REGION_OPTIONS;

const GPU_OPTIONS: [(&str, &str); 7] = [
    ("A100", "NVIDIA A100"),
    ("L40S", "NVIDIA L40S"),
    ("H100", "NVIDIA H100"),
    ("H200", "NVIDIA H200"),
    ("B200", "NVIDIA B200"),
    ("GB200", "NVIDIA GB200"),
    ("CPU", "CPU only (no accelerator)"),
];

#[component]
pub fn AdminFactories() -> impl IntoView {
    let create = ServerAction::<CreateFactory>::new();
    let value = create.value();
    let list = Resource::new(move || create.version().get(), |_| factories());
    view! {
        <Title text="Factories · Admin · Tokenmill" />
        <h1>"Factories"</h1>
        <AdminNav />
        <Transition fallback=|| view! { <p class="loading">"Loading…"</p> }>
            {move || Suspend::new(async move {
                match list.await {
                    Ok(list) if list.is_empty() => view! { <p>"No factories yet."</p> }.into_any(),
                    Ok(list) => {
                        view! {
                            <table class="list" data-testid="factories">
                                <thead>
                                    <tr>
                                        <th>"Name"</th>
                                        <th>"Partner"</th>
                                        <th>"Region"</th>
                                        <th>"GPUs"</th>
                                        <th>"Models"</th>
                                    </tr>
                                </thead>
                                <tbody>
                                    {list
                                        .into_iter()
                                        .map(|f| {
                                            view! {
                                                <tr>
                                                    <td>{f.name}</td>
                                                    <td>{f.partner}</td>
                                                    <td>{f.region}</td>
                                                    <td>{f.gpu_class}</td>
                                                    <td>{f.models.join(", ")}</td>
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
            <h2>"Add a factory"</h2>
            <p>"Until remote workers join, every factory is served by this portal's worker pool."</p>
            <ActionForm action=create node_ref=reset_on_success(create.value())>
                <FormError message=general_error(value) />
                <label for="partner_org_id">"Partner"</label>
                <select id="partner_org_id" name="partner_org_id" required>
                    <option value="">"Choose…"</option>
                    <PartnerOptions />
                </select>
                <FieldError message=field_error(value, "partner") id="partner_org_id-error" />
                <label for="factory_name">"Name"</label>
                <input id="factory_name" name="name" required />
                <FieldError message=field_error(value, "name") id="factory_name-error" />
                <Choice label="Region" id="factory_region" name="region" options=&REGION_OPTIONS error=field_error(value, "region") />
                <Choice label="GPU class" id="gpu_class" name="gpu_class" options=&GPU_OPTIONS error=field_error(value, "gpu_class") />
                <label for="models">"Models served (ids, one per line or separated by commas)"</label>
                <textarea id="models" name="models" rows="3" required></textarea>
                <FieldError message=field_error(value, "models") id="models-error" />
                <button type="submit" class="primary">"Create factory"</button>
            </ActionForm>
        </section>
    }
}
