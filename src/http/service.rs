//! The service's routes beyond the system ones: the webhook and the status API.

use super::{Api, Body, Request, Routes};
use crate::http::reply::Reply;
use std::future::Future;
use std::pin::Pin;

pub struct ServiceRoutes {}

impl ServiceRoutes {
    pub fn new() -> Self {
        ServiceRoutes {}
    }
}

impl Default for ServiceRoutes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes for ServiceRoutes {
    fn handle<'a>(
        &'a self,
        _api: &'a Api,
        _req: &'a Request,
        _body: &'a mut Body,
    ) -> Pin<Box<dyn Future<Output = Option<Reply>> + Send + 'a>> {
        Box::pin(async move { None })
    }
}
