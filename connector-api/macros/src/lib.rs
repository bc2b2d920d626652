//! One attribute per connector: on the `impl SourceConfig for MyConfig` block (or `SinkConfig`,
//! `TransformConfig`, `StreamTransformConfig`), `#[sluice_api::source("name")]` (`sink`,
//! `transform`, `stream_transform`) makes `type: name` select it in a pipeline file and lists it
//! in `sluice plugins`: it applies typetag's registration (and `async_trait` where the trait is
//! async) and submits the plugin's description, so the name is written once.
//!
//! `#[sluice_api::config]` on the config struct adds what the attributes need of it (`Debug`,
//! `Clone`, serde's `Serialize`/`Deserialize` and schemars' `JsonSchema`, through the paths
//! `sluice_api` re-exports), so a connector crate depends on `sluice-api` alone.
//!
//! The expansions name `typetag`, `serde`, `schemars` and `async_trait` only through
//! `::sluice_api::…`; a crate that renames `sluice-api` in its `Cargo.toml` must keep the
//! name `sluice_api`.

use proc_macro::TokenStream;
use quote::quote;
use syn::{parse_macro_input, ItemImpl, ItemStruct, LitStr};

#[derive(Clone, Copy)]
enum Kind {
    Source,
    Sink,
    Transform,
    StreamTransform,
}

impl Kind {
    fn registry(self) -> proc_macro2::TokenStream {
        match self {
            Kind::Source => quote!(Source),
            Kind::Sink => quote!(Sink),
            Kind::Transform => quote!(Transform),
            Kind::StreamTransform => quote!(StreamTransform),
        }
    }

    /// The trait the impl must be of, for the error when it is another.
    fn config_trait(self) -> &'static str {
        match self {
            Kind::Source => "SourceConfig",
            Kind::Sink => "SinkConfig",
            Kind::Transform => "TransformConfig",
            Kind::StreamTransform => "StreamTransformConfig",
        }
    }

    /// Whether the trait's methods are async (`async_trait`).
    fn is_async(self) -> bool {
        matches!(self, Kind::Source | Kind::Sink)
    }
}

/// Registers a source config: `#[sluice_api::source("csv")] impl SourceConfig for CsvConfig {…}`.
#[proc_macro_attribute]
pub fn source(args: TokenStream, item: TokenStream) -> TokenStream {
    register(Kind::Source, args, item)
}

/// Registers a sink config: `#[sluice_api::sink("mysql")] impl SinkConfig for MySqlConfig {…}`.
#[proc_macro_attribute]
pub fn sink(args: TokenStream, item: TokenStream) -> TokenStream {
    register(Kind::Sink, args, item)
}

/// Registers a record transform: `#[sluice_api::transform("jq")] impl TransformConfig for …`.
#[proc_macro_attribute]
pub fn transform(args: TokenStream, item: TokenStream) -> TokenStream {
    register(Kind::Transform, args, item)
}

/// Registers a stream transform: `#[sluice_api::stream_transform("window")] impl
/// StreamTransformConfig for …`.
#[proc_macro_attribute]
pub fn stream_transform(args: TokenStream, item: TokenStream) -> TokenStream {
    register(Kind::StreamTransform, args, item)
}

fn register(kind: Kind, args: TokenStream, item: TokenStream) -> TokenStream {
    let name = parse_macro_input!(args as LitStr);
    let implementation = parse_macro_input!(item as ItemImpl);
    let of_trait = implementation
        .trait_
        .as_ref()
        .and_then(|(_, path, _)| path.segments.last())
        .map(|segment| segment.ident.to_string());
    if of_trait.as_deref() != Some(kind.config_trait()) {
        return syn::Error::new_spanned(
            &implementation.self_ty,
            format!(
                "this attribute goes on `impl {} for YourConfig`",
                kind.config_trait()
            ),
        )
        .to_compile_error()
        .into();
    }
    let config = &implementation.self_ty;
    let registry = kind.registry();
    let asynchronous = kind
        .is_async()
        .then(|| quote!(#[::sluice_api::async_trait]));
    quote! {
        // typetag's expansion names `typetag::…`: in this block it is the API's.
        const _: () = {
            use ::sluice_api::typetag;
            #asynchronous
            #[typetag::serde(name = #name)]
            #implementation
        };
        ::sluice_api::register_plugin!(#registry, #name, #config);
    }
    .into()
}

/// The derives a connector's config needs (`Debug`, `Clone`, `Serialize`, `Deserialize`,
/// `JsonSchema`), through the crates `sluice_api` re-exports. Put it above the struct's own
/// `#[serde(…)]` attributes.
#[proc_macro_attribute]
pub fn config(args: TokenStream, item: TokenStream) -> TokenStream {
    if !args.is_empty() {
        return syn::Error::new(
            proc_macro2::Span::call_site(),
            "`#[sluice_api::config]` takes no arguments",
        )
        .to_compile_error()
        .into();
    }
    let config = parse_macro_input!(item as ItemStruct);
    quote! {
        #[derive(
            ::std::fmt::Debug,
            ::std::clone::Clone,
            ::sluice_api::serde::Serialize,
            ::sluice_api::serde::Deserialize,
            ::sluice_api::schemars::JsonSchema
        )]
        #[serde(crate = "::sluice_api::serde")]
        #[schemars(crate = "::sluice_api::schemars")]
        #config
    }
    .into()
}
