//! The table of Customer API operations: one entry per operation, with its method, its
//! default path, its parameters and their types.
//!
//! Owns: the single description of the API surface that the client, the route table, the
//! client-side validation, the `obdgw api` command line, the simulator's request parsing and
//! its OpenAPI document are all derived from, so they cannot drift apart.
//!
//! Does not own: operation-specific rules beyond types and presence (see `validate`), nor the
//! response types (see `model`).
//!
//! Paths marked `confirmed` were seen verbatim in public vendor documentation (NOTES.md); the
//! others are REST-consistent defaults in the same style. Every path can be overridden in the
//! configuration (`cloud.routes.<key>`).

/// HTTP method of an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    Get,
    Post,
    Put,
    Delete,
}

impl Method {
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Put => "PUT",
            Method::Delete => "DELETE",
        }
    }

    /// Whether repeating the request has the same effect as sending it once; only these are
    /// retried after a 5xx or a transport failure.
    pub fn idempotent(self) -> bool {
        !matches!(self, Method::Post)
    }
}

/// Where a parameter travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Loc {
    Path,
    Query,
    Body,
}

/// The documented type of a parameter. Parsing is lenient where the vendor's own examples are
/// (integers as digit strings, pincodes as numbers), serialization uses the documented type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ty {
    /// A 64-bit integer (in a body also a string of digits).
    Int,
    /// A number.
    Num,
    /// A string.
    Str,
    /// A string or an integer (pincodes, connector ids in the deprecated login).
    Code,
    /// `true`/`false` (in a query also `1`/`0`).
    Bool,
    /// A UUID in canonical text form.
    Uuid,
    /// An e-mail address.
    Email,
    /// A non-empty list of integers (in a query: comma-separated).
    IntList,
    /// A JSON object.
    Object,
    /// A list of JSON objects.
    ObjectList,
}

/// One parameter of an operation.
#[derive(Debug, Clone, Copy)]
pub struct Param {
    /// Wire name. In a body a single dot nests one level (`message.original`).
    pub name: &'static str,
    pub loc: Loc,
    pub ty: Ty,
    pub required: bool,
    /// One line for `--help` and the OpenAPI document.
    pub help: &'static str,
}

const fn p(name: &'static str, loc: Loc, ty: Ty, required: bool, help: &'static str) -> Param {
    Param {
        name,
        loc,
        ty,
        required,
        help,
    }
}

/// Every operation. The discriminant indexes [`OPS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    ConnectorsList,
    ConnectorsGet,
    ConnectorsGetByUuid,
    ConnectorsDismissAttention,
    ConnectorsActiveTicket,
    ProductsGroups,
    ProductsBundles,
    ProductsList,
    ProductsAddFavorite,
    ProductsRemoveFavorite,
    ProductsPrerequisites,
    TicketsCreate,
    TicketsCsat,
    TicketsNotes,
    TicketsHistorical,
    TicketsHistoricalGet,
    TicketsPrepared,
    TicketsTotals,
    VehiclesServiced,
    VehiclesLookup,
    VehiclesMakes,
    VehiclesModelGroups,
    VehiclesModelGroup,
    VehiclesModels,
    VehiclesModel,
    VehiclesVariants,
    VehiclesVariant,
    AccountUserInfo,
    AccountWallet,
    AccountCustomer,
    AccountCustomerEdit,
    AccountBranding,
    AccountForgotPassword,
    EmployeesList,
    EmployeesAdd,
    EmployeesGet,
    EmployeesEdit,
    AuthLoginPincode,
    AuthLoginUuid,
    AuthLoginOtp,
    ServiceCenterInfo,
    ServiceCenterState,
    MiscTranslate,
    ChannelsGet,
    ChannelsControlMessage,
    ChannelsCreateAttachment,
    ChannelsAttachment,
}

/// Description of one operation.
#[derive(Debug, Clone, Copy)]
pub struct OpSpec {
    pub op: Op,
    /// CLI group (`obdgw api <group> ...`).
    pub group: &'static str,
    /// CLI operation name within the group (kebab-case).
    pub name: &'static str,
    pub method: Method,
    /// Default path template; `{name}` placeholders are path parameters.
    pub path: &'static str,
    /// Seen verbatim in public vendor documentation.
    pub confirmed: bool,
    /// Needs a bearer token.
    pub auth: bool,
    /// Takes `offset`/`limit` and answers `{result, total, offset, limit}`.
    pub paged: bool,
    /// Success status the simulator answers with.
    pub ok_status: u16,
    /// Response schema name (`Connector`, `List<Connector>`), [`NULL_RESPONSE`] for a JSON
    /// `null`, or `""` for no content.
    pub response: &'static str,
    pub summary: &'static str,
    pub params: &'static [Param],
}

impl OpSpec {
    /// Route-table key (`connectors_get_by_uuid`).
    pub fn key(&self) -> String {
        format!("{}_{}", self.group, self.name).replace('-', "_")
    }

    /// Whether a failed attempt may be repeated.
    pub fn idempotent(&self) -> bool {
        self.method.idempotent()
    }
}

impl Op {
    pub fn spec(self) -> &'static OpSpec {
        &OPS[self as usize]
    }

    /// Look an operation up by route key (`connectors_get`).
    pub fn from_key(key: &str) -> Option<Op> {
        OPS.iter().find(|s| s.key() == key).map(|s| s.op)
    }
}

use Loc::{Body, Path, Query};
use Ty::*;

const MODEL_VARIANT: [Param; 2] = [
    p(
        "vehicle_model_id",
        Query,
        Int,
        true,
        "ID of the vehicle model",
    ),
    p(
        "vehicle_model_variant_id",
        Query,
        Int,
        true,
        "ID of the vehicle model variant",
    ),
];

const EMPLOYEE_BODY: [Param; 4] = [
    p(
        "given_name",
        Body,
        Str,
        true,
        "given name (at most 255 characters)",
    ),
    p(
        "family_name",
        Body,
        Str,
        true,
        "family name (at most 255 characters)",
    ),
    p(
        "username",
        Body,
        Email,
        true,
        "e-mail address used to log in",
    ),
    p(
        "correspondence_locale",
        Body,
        Str,
        false,
        "BCP 47 locale for correspondence (en-GB, nl-NL, ...)",
    ),
];

const LOGIN_RESPONSE: &str = "Tokens";

/// Response "schema" of operations whose documented answer is the JSON literal `null`.
pub const NULL_RESPONSE: &str = "null";

/// A whole Product as the body of add-favorite (the reference sends every field; only the
/// `id` matters to find the product, so only it is required here).
const PRODUCT_BODY: [Param; 12] = [
    p("id", Body, Int, true, "ID of the product"),
    p("item_number", Body, Code, false, "item number (SKU)"),
    p("name", Body, Str, false, "name of the product"),
    p(
        "internal_name",
        Body,
        Str,
        false,
        "universal (internal, English) name",
    ),
    p("description", Body, Str, false, "description"),
    p("is_favorite", Body, Bool, false, "whether it is a favorite"),
    p(
        "is_unattended",
        Body,
        Bool,
        false,
        "whether an unattended process executes it",
    ),
    p("gross_price", Body, Object, false, "gross price (Money)"),
    p("net_price", Body, Object, false, "net price (Money)"),
    p("total_discount", Body, Object, false, "total discount"),
    p(
        "original_equipment_service_fee",
        Body,
        Object,
        false,
        "original equipment service fee (Money), null if none",
    ),
    p("price", Body, Object, false, "deprecated price block"),
];

/// The operations, indexed by `Op as usize`.
pub static OPS: &[OpSpec] = &[
    OpSpec {
        op: Op::ConnectorsList,
        group: "connectors",
        name: "list",
        method: Method::Get,
        path: "/v1/connectors",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Connector>",
        summary: "Connectors linked to the logged-in user",
        params: &[],
    },
    OpSpec {
        op: Op::ConnectorsGet,
        group: "connectors",
        name: "get",
        method: Method::Get,
        path: "/v1/connectors/{connectorId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Connector",
        summary: "One connector by ID",
        params: &[p("connectorId", Path, Int, true, "ID of the connector")],
    },
    OpSpec {
        op: Op::ConnectorsGetByUuid,
        group: "connectors",
        name: "get-by-uuid",
        method: Method::Get,
        path: "/v1/connectors/uuid/{connectorUUID}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Connector",
        summary: "One connector by UUID",
        params: &[p(
            "connectorUUID",
            Path,
            Uuid,
            true,
            "UUID of the connector",
        )],
    },
    OpSpec {
        op: Op::ConnectorsDismissAttention,
        group: "connectors",
        name: "dismiss-attention",
        method: Method::Post,
        path: "/v1/connectors/uuid/{connectorUUID}/actions/dismiss-call-for-attention",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 204,
        response: "",
        summary: "Dismiss a call for attention on the connector",
        params: &[p(
            "connectorUUID",
            Path,
            Uuid,
            true,
            "UUID of the connector",
        )],
    },
    OpSpec {
        op: Op::ConnectorsActiveTicket,
        group: "connectors",
        name: "active-ticket",
        method: Method::Get,
        path: "/v1/connectors/{connectorId}/active-ticket",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Ticket",
        summary: "The active ticket on a connector (404, or 200 with null, when there is none)",
        // The reference types this `connectorId` as a string (the others as integers).
        params: &[p(
            "connectorId",
            Path,
            Str,
            true,
            "ID of the connector (a string in the reference)",
        )],
    },
    OpSpec {
        op: Op::ProductsGroups,
        group: "products",
        name: "groups",
        method: Method::Get,
        path: "/v1/product-groups",
        confirmed: true,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<ProductGroup>",
        summary: "Product groups for a vehicle",
        params: &MODEL_VARIANT,
    },
    OpSpec {
        op: Op::ProductsBundles,
        group: "products",
        name: "bundles",
        method: Method::Get,
        path: "/v1/product-bundles",
        confirmed: true,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<ProductBundle>",
        summary: "Product bundles for a vehicle",
        params: &[
            MODEL_VARIANT[0],
            MODEL_VARIANT[1],
            p(
                "product_group_id",
                Query,
                Int,
                false,
                "only bundles of this product group",
            ),
        ],
    },
    OpSpec {
        op: Op::ProductsList,
        group: "products",
        name: "list",
        method: Method::Get,
        path: "/v1/products",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Product>",
        summary: "Products for a vehicle, by group or bundle (not both)",
        params: &[
            MODEL_VARIANT[0],
            MODEL_VARIANT[1],
            p(
                "product_group_id",
                Query,
                Int,
                false,
                "only products of this group; excludes product_bundle_id",
            ),
            p(
                "product_bundle_id",
                Query,
                Uuid,
                false,
                "only products of this bundle; excludes product_group_id",
            ),
            // The reference documents this filter ("boolean or integer, default true") without
            // its name: `is_favorite` is a guess (the name of the product's own flag).
            p(
                "is_favorite",
                Query,
                Bool,
                false,
                "favorite flag to match: true or false (1 or 0); absent means true, favorites only (the reference's default); the parameter name is a guess",
            ),
        ],
    },
    OpSpec {
        op: Op::ProductsAddFavorite,
        group: "products",
        name: "add-favorite",
        method: Method::Post,
        path: "/v1/products/favorites",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: NULL_RESPONSE,
        summary: "Flag a product as favorite (the body is the whole product)",
        params: &PRODUCT_BODY,
    },
    OpSpec {
        op: Op::ProductsRemoveFavorite,
        group: "products",
        name: "remove-favorite",
        method: Method::Delete,
        path: "/v1/products/favorites/{id}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 204,
        response: "",
        summary: "Remove a product from the favorites",
        params: &[p(
            "id",
            Path,
            Str,
            true,
            "ID of the product (a string in the reference)",
        )],
    },
    OpSpec {
        op: Op::ProductsPrerequisites,
        group: "products",
        name: "prerequisites",
        method: Method::Get,
        path: "/v1/product-prerequisites",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Prerequisite>",
        summary: "Prerequisites of products on a vehicle",
        params: &[
            MODEL_VARIANT[0],
            MODEL_VARIANT[1],
            p(
                "product_id",
                Query,
                IntList,
                true,
                "product IDs, comma-separated",
            ),
        ],
    },
    OpSpec {
        op: Op::TicketsCreate,
        group: "tickets",
        name: "create",
        method: Method::Post,
        path: "/v1/tickets",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 201,
        response: "Ticket",
        summary: "Create a ticket (at most one pending ticket per connector)",
        params: &[
            p("vin", Body, Str, true, "VIN: 17 letters and digits"),
            p(
                "vehicle_model_id",
                Body,
                Int,
                true,
                "ID of the vehicle model",
            ),
            p(
                "vehicle_model_variant_id",
                Body,
                Int,
                true,
                "ID of the vehicle model variant",
            ),
            p("connector_id", Body, Int, true, "ID of the connector"),
            p("voucher", Body, Str, false, "voucher code"),
            p("product_ids", Body, IntList, true, "products to order"),
            p(
                "product_prerequisites",
                Body,
                ObjectList,
                false,
                "answers to prerequisites: [{definition_id, value}]",
            ),
            p(
                "metadata",
                Body,
                Object,
                true,
                "client metadata (app_name, app_version, platform, ...)",
            ),
            p(
                "prepared_ticket_id",
                Body,
                Uuid,
                false,
                "prepared ticket this ticket realises",
            ),
            p(
                "reference",
                Body,
                Str,
                false,
                "free reference (licence plate)",
            ),
            p(
                "confirmed_unattended_service",
                Body,
                Bool,
                false,
                "consent to outsourcing to an unattended service",
            ),
        ],
    },
    OpSpec {
        op: Op::TicketsCsat,
        group: "tickets",
        name: "csat",
        method: Method::Put,
        path: "/v1/tickets/{ticketId}/csat",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: NULL_RESPONSE,
        summary: "Add or update the satisfaction score (-1..=1) and comment of a ticket",
        params: &[
            p("ticketId", Path, Int, true, "ID of the ticket"),
            p(
                "score",
                Body,
                Num,
                true,
                "score from -1 (worst) to 1 (best)",
            ),
            p("comment", Body, Str, false, "comment"),
        ],
    },
    OpSpec {
        op: Op::TicketsNotes,
        group: "tickets",
        name: "notes",
        method: Method::Get,
        path: "/v1/tickets/{ticketId}/notes",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Note>",
        summary: "Notes of a ticket",
        params: &[p("ticketId", Path, Int, true, "ID of the ticket")],
    },
    OpSpec {
        op: Op::TicketsHistorical,
        group: "tickets",
        name: "historical",
        method: Method::Get,
        path: "/v1/historical-tickets",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<HistoricalTicket>",
        summary: "Finished tickets, optionally for one VIN or connector",
        params: &[
            p("vin", Query, Str, false, "only tickets for this VIN"),
            p(
                "connector_id",
                Query,
                Int,
                false,
                "only tickets on this connector",
            ),
        ],
    },
    OpSpec {
        op: Op::TicketsHistoricalGet,
        group: "tickets",
        name: "historical-get",
        method: Method::Get,
        path: "/v1/historical-tickets/{historicalTicketId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "HistoricalTicket",
        summary: "One finished ticket",
        params: &[p(
            "historicalTicketId",
            Path,
            Int,
            true,
            "ID of the historical ticket",
        )],
    },
    OpSpec {
        op: Op::TicketsPrepared,
        group: "tickets",
        name: "prepared",
        method: Method::Get,
        path: "/v1/prepared-tickets",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<PreparedTicket>",
        summary: "Prepared tickets available for a VIN",
        params: &[p("vin", Query, Str, true, "VIN of the vehicle")],
    },
    OpSpec {
        op: Op::TicketsTotals,
        group: "tickets",
        name: "totals",
        method: Method::Post,
        path: "/v1/tickets/totals",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Totals",
        summary: "Calculate prices of products for a vehicle, with an optional voucher",
        params: &[
            p("voucher", Body, Str, false, "voucher code"),
            p(
                "vehicle_model_id",
                Body,
                Int,
                true,
                "ID of the vehicle model",
            ),
            p(
                "vehicle_model_variant_id",
                Body,
                Int,
                true,
                "ID of the vehicle model variant",
            ),
            p("vin", Body, Str, false, "VIN: 17 letters and digits"),
            p("prepared_ticket_id", Body, Uuid, false, "prepared ticket"),
            p("product_ids", Body, IntList, true, "products to price"),
        ],
    },
    OpSpec {
        op: Op::VehiclesServiced,
        group: "vehicles",
        name: "serviced",
        method: Method::Get,
        path: "/v1/serviced-vehicles",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<ServicedVehicle>",
        summary: "Serviced vehicles, most recent first",
        params: &[],
    },
    OpSpec {
        op: Op::VehiclesLookup,
        group: "vehicles",
        name: "lookup",
        method: Method::Get,
        path: "/v1/vehicles/lookup",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "VinLookup",
        summary: "Find make, model group, model and variant by VIN",
        params: &[p("vin", Query, Str, true, "VIN: 17 letters and digits")],
    },
    OpSpec {
        op: Op::VehiclesMakes,
        group: "vehicles",
        name: "makes",
        method: Method::Get,
        path: "/v1/vehicle-makes",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Make>",
        summary: "Vehicle makes",
        params: &[],
    },
    OpSpec {
        op: Op::VehiclesModelGroups,
        group: "vehicles",
        name: "model-groups",
        method: Method::Get,
        path: "/v1/vehicle-model-groups",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<ModelGroup>",
        summary: "Model groups of a make",
        params: &[p("vehicle_make_id", Query, Int, true, "ID of the make")],
    },
    OpSpec {
        op: Op::VehiclesModelGroup,
        group: "vehicles",
        name: "model-group",
        method: Method::Get,
        path: "/v1/vehicle-model-groups/{modelGroupId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "ModelGroup",
        summary: "One model group",
        params: &[p("modelGroupId", Path, Int, true, "ID of the model group")],
    },
    OpSpec {
        op: Op::VehiclesModels,
        group: "vehicles",
        name: "models",
        method: Method::Get,
        path: "/v1/vehicle-models",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Model>",
        summary: "Models of a model group",
        params: &[p(
            "vehicle_model_group_id",
            Query,
            Int,
            true,
            "ID of the model group",
        )],
    },
    OpSpec {
        op: Op::VehiclesModel,
        group: "vehicles",
        name: "model",
        method: Method::Get,
        path: "/v1/vehicle-models/{modelId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Model",
        summary: "One model",
        params: &[p("modelId", Path, Int, true, "ID of the model")],
    },
    OpSpec {
        op: Op::VehiclesVariants,
        group: "vehicles",
        name: "variants",
        method: Method::Get,
        path: "/v1/vehicle-model-variants",
        confirmed: false,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Variant>",
        summary: "Variants of a model",
        params: &[p("vehicle_model_id", Query, Int, true, "ID of the model")],
    },
    OpSpec {
        op: Op::VehiclesVariant,
        group: "vehicles",
        name: "variant",
        method: Method::Get,
        path: "/v1/vehicle-model-variants/{modelVariantId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Variant",
        summary: "One model variant",
        params: &[p("modelVariantId", Path, Int, true, "ID of the variant")],
    },
    OpSpec {
        op: Op::AccountUserInfo,
        group: "account",
        name: "user-info",
        method: Method::Get,
        path: "/v1/users/me",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "UserInfo",
        summary: "The logged-in user, their company and service provider",
        params: &[],
    },
    OpSpec {
        op: Op::AccountWallet,
        group: "account",
        name: "wallet",
        method: Method::Get,
        path: "/v1/customer-wallet",
        confirmed: true,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Wallet",
        summary: "Prepaid wallet balance",
        params: &[],
    },
    OpSpec {
        op: Op::AccountCustomer,
        group: "account",
        name: "customer",
        method: Method::Get,
        path: "/v1/customers/me",
        confirmed: true,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Customer",
        summary: "Customer details",
        params: &[],
    },
    OpSpec {
        op: Op::AccountCustomerEdit,
        group: "account",
        name: "customer-edit",
        method: Method::Put,
        path: "/v1/customers/me",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Customer",
        summary: "Edit customer details (only the given fields change)",
        params: &[
            p("name", Body, Str, false, "company name"),
            p("street", Body, Str, false, "street"),
            p("number", Body, Str, false, "street number"),
            p("postal_code", Body, Str, false, "postal code"),
            p("city", Body, Str, false, "city"),
            p("country", Body, Str, false, "ISO 3166 country code (NL)"),
            p("email_address", Body, Email, false, "company e-mail"),
            p(
                "financial_email_address",
                Body,
                Email,
                false,
                "financial department e-mail",
            ),
            p("phone", Body, Code, false, "phone number"),
        ],
    },
    OpSpec {
        op: Op::AccountBranding,
        group: "account",
        name: "branding",
        method: Method::Get,
        path: "/v1/branding",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Branding",
        summary: "Branding of the customer portal",
        params: &[],
    },
    OpSpec {
        op: Op::AccountForgotPassword,
        group: "account",
        name: "forgot-password",
        method: Method::Post,
        path: "/legacy/api/mobile/authentication/authenticate/forgot/password",
        confirmed: true,
        auth: false,
        paged: false,
        ok_status: 200,
        response: "ForgotPassword",
        summary: "Start a password reset (customer portal migration only)",
        params: &[p(
            "email_address",
            Body,
            Email,
            true,
            "e-mail address of the account",
        )],
    },
    OpSpec {
        op: Op::EmployeesList,
        group: "employees",
        name: "list",
        method: Method::Get,
        path: "/v1/employees",
        confirmed: true,
        auth: true,
        paged: true,
        ok_status: 200,
        response: "List<Employee>",
        summary: "Employees",
        params: &[],
    },
    OpSpec {
        op: Op::EmployeesAdd,
        group: "employees",
        name: "add",
        method: Method::Post,
        path: "/v1/employees",
        confirmed: true,
        auth: true,
        paged: false,
        ok_status: 201,
        response: "Employee",
        summary: "Add an employee",
        params: &EMPLOYEE_BODY,
    },
    OpSpec {
        op: Op::EmployeesGet,
        group: "employees",
        name: "get",
        method: Method::Get,
        path: "/v1/employees/{employeeId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Employee",
        summary: "One employee (`me` for the logged-in one)",
        params: &[p("employeeId", Path, Str, true, "employee ID or `me`")],
    },
    OpSpec {
        op: Op::EmployeesEdit,
        group: "employees",
        name: "edit",
        method: Method::Put,
        path: "/v1/employees/{employeeId}",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Employee",
        summary: "Change an employee",
        params: &[
            p("employeeId", Path, Str, true, "employee ID or `me`"),
            EMPLOYEE_BODY[0],
            EMPLOYEE_BODY[1],
            EMPLOYEE_BODY[2],
            EMPLOYEE_BODY[3],
            p(
                "enabled",
                Body,
                Bool,
                false,
                "whether the employee may log in",
            ),
        ],
    },
    OpSpec {
        op: Op::AuthLoginPincode,
        group: "auth",
        name: "login-pincode",
        method: Method::Post,
        path: "/v1/authenticate/pincode",
        confirmed: true,
        auth: false,
        paged: false,
        ok_status: 200,
        response: LOGIN_RESPONSE,
        summary: "Log in with connector ID and pincode (deprecated: use the UUID)",
        params: &[
            p("connector_id", Body, Code, true, "ID of the connector"),
            p("pincode", Body, Code, true, "pincode of the connector"),
        ],
    },
    OpSpec {
        op: Op::AuthLoginUuid,
        group: "auth",
        name: "login-uuid",
        method: Method::Post,
        path: "/v1/authenticate/connector",
        confirmed: false,
        auth: false,
        paged: false,
        ok_status: 200,
        response: LOGIN_RESPONSE,
        summary: "Log in with connector UUID and pincode",
        params: &[
            p("connector_uuid", Body, Uuid, true, "UUID of the connector"),
            p("pincode", Body, Code, true, "pincode of the connector"),
        ],
    },
    OpSpec {
        op: Op::AuthLoginOtp,
        group: "auth",
        name: "login-otp",
        method: Method::Post,
        path: "/v1/authenticate/otp",
        confirmed: false,
        auth: false,
        paged: false,
        ok_status: 200,
        response: LOGIN_RESPONSE,
        summary: "Log in with a one-time password",
        params: &[p("otp", Body, Str, true, "one-time password")],
    },
    OpSpec {
        op: Op::ServiceCenterInfo,
        group: "service-center",
        name: "info",
        method: Method::Get,
        path: "/v1/service-center",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "ServiceCenter",
        summary: "Service center information",
        params: &[],
    },
    OpSpec {
        op: Op::ServiceCenterState,
        group: "service-center",
        name: "state",
        method: Method::Get,
        path: "/v1/service-center/state",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "ServiceCenterState",
        summary: "Whether the service center accepts tickets now",
        params: &[],
    },
    OpSpec {
        op: Op::MiscTranslate,
        group: "misc",
        name: "translate",
        method: Method::Post,
        path: "/v1/translate",
        confirmed: true,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Translation",
        summary: "Translate a text",
        params: &[
            p("message.original", Body, Str, true, "text to translate"),
            p(
                "target_language",
                Body,
                Str,
                true,
                "target language (ISO 639-1: de, nl, en, ...)",
            ),
        ],
    },
    OpSpec {
        op: Op::ChannelsGet,
        group: "channels",
        name: "get",
        method: Method::Get,
        path: "/v1/channels/{channelId}",
        confirmed: true,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Channel",
        summary: "One chat channel",
        params: &[p("channelId", Path, Str, true, "ID of the channel")],
    },
    OpSpec {
        op: Op::ChannelsControlMessage,
        group: "channels",
        name: "control-message",
        method: Method::Post,
        path: "/v1/channels/{channelId}/actions/send-control-message",
        confirmed: true,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "ControlMessage",
        summary: "Send a control message (a ping over the websockets)",
        params: &[p("channelId", Path, Str, true, "ID of the channel")],
    },
    OpSpec {
        op: Op::ChannelsCreateAttachment,
        group: "channels",
        name: "create-attachment",
        method: Method::Post,
        path: "/v1/channels/{channel_id}/attachments",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 201,
        response: "Attachment",
        summary: "Create an attachment on a channel",
        params: &[
            p("channel_id", Path, Str, true, "ID of the channel"),
            p("file_name", Body, Str, false, "file name of the attachment"),
        ],
    },
    OpSpec {
        op: Op::ChannelsAttachment,
        group: "channels",
        name: "attachment",
        method: Method::Get,
        path: "/v1/channels/{channel_id}/attachments",
        confirmed: false,
        auth: true,
        paged: false,
        ok_status: 200,
        response: "Attachment",
        summary: "Get an attachment of a channel by file reference",
        params: &[
            p("channel_id", Path, Str, true, "ID of the channel"),
            p(
                "file_reference",
                Query,
                Str,
                true,
                "file reference from create-attachment or a chat message",
            ),
        ],
    },
];

/// Names of the `{placeholders}` in a path template, in order.
pub fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                out.push(&after[..end]);
                rest = &after[end + 1..];
            }
            None => break,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_is_indexed_by_op_and_keys_are_unique() {
        for (i, s) in OPS.iter().enumerate() {
            assert_eq!(s.op as usize, i, "OPS[{i}] is {:?}", s.op);
            assert_eq!(Op::from_key(&s.key()), Some(s.op));
            let names: Vec<&str> = s
                .params
                .iter()
                .filter(|p| p.loc == Loc::Path)
                .map(|p| p.name)
                .collect();
            assert_eq!(placeholders(s.path), names, "{}", s.key());
        }
        let mut routes: Vec<(&str, &str)> =
            OPS.iter().map(|s| (s.method.as_str(), s.path)).collect();
        routes.sort();
        routes.dedup();
        assert_eq!(routes.len(), OPS.len(), "two operations share a route");
        assert_eq!(OPS.len(), 47);
    }

    #[test]
    fn only_post_is_not_idempotent() {
        assert!(!Op::TicketsCreate.spec().idempotent());
        assert!(Op::ConnectorsList.spec().idempotent());
        assert!(Op::TicketsCsat.spec().idempotent());
    }
}
