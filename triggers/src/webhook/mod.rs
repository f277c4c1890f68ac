//! The webhook trigger, built in steps. What is here: [`verify`], each provider's signature
//! scheme checked on the raw body in constant time, with the providers' published test vectors.
//! Not yet: the `[[trigger.webhook]]` sections, the routes on the public listener, the
//! deduplication by delivery id and the durable accept (`trigger.webhook` is still refused as an
//! unknown trigger kind).

pub mod verify;
