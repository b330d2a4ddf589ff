// The shapes the Rust side sends and takes: generated from the Rust types
// (lumen-core, lumen-store, lumen-hub) into `bindings.ts` by
// crates/lumen-core/tests/bindings.rs, which fails CI when they are stale.
// Import them from here.
export type * from "./bindings";
