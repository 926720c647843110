// `sqlx::migrate!` embeds the migrations at compile time; rebuild when one is added or changed
// (cargo does not otherwise notice a new file in the folder).
fn main() {
    println!("cargo:rerun-if-changed=../migrations");
}
