//! Versions, aliases and layers: what is published, and what names point
//! to it.

use std::time::SystemTime;

use super::{AliasSpec, Node, NodeError};
use crate::functions::{
    self, validate_alias_name, validate_routing, Alias, Function, FunctionsError, LayerVersion,
};
use crate::packages::PackageRules;

impl Node {
    pub fn publish_version(&self, name: &str, description: &str) -> Result<Function, NodeError> {
        functions::validate_description(description)?;
        let v = self.store.publish_version(name, description)?;
        self.prepare_in_background(&v);
        Ok(v)
    }

    /// A published version's function snapshot is built now, as SnapStart
    /// does on publish, not at its first invocation; meanwhile its state is
    /// `Pending` ([`Node::preparation`]).
    pub(super) fn prepare_in_background(&self, v: &Function) {
        if self.pool.launcher().expect_preparation(v) {
            let (invoker, v) = (self.invoker.clone(), v.clone());
            tokio::spawn(async move { invoker.prepare(&v).await });
        }
    }

    /// Where a version's function snapshot stands (`None`: built or not
    /// needed).
    pub fn preparation(&self, f: &Function) -> Option<crate::launch::Preparation> {
        self.pool.launcher().preparation(&f.name, &f.version)
    }

    /// The start scheduler's settings and its starts.
    pub fn starts(&self) -> (crate::launch::StartSettings, crate::launch::StartCounts) {
        (
            self.pool.launcher().start_settings(),
            self.pool.launcher().start_counts(),
        )
    }

    /// `$LATEST` and every published version.
    pub fn list_versions(&self, name: &str) -> Result<Vec<Function>, NodeError> {
        let mut out = vec![self.store.get(name)?];
        out.extend(self.store.list_versions(name)?);
        Ok(out)
    }

    pub(super) fn check_version_exists(
        &self,
        function: &str,
        version: &str,
    ) -> Result<(), NodeError> {
        functions::validate_version(version)?;
        self.store.get_qualified(function, version)?;
        Ok(())
    }

    pub(super) fn routing(
        list: Option<Vec<(String, f64)>>,
    ) -> Result<Option<Option<(String, f64)>>, NodeError> {
        match list {
            None => Ok(None),
            Some(l) if l.is_empty() => Ok(Some(None)),
            Some(l) if l.len() == 1 => Ok(Some(l.into_iter().next())),
            Some(_) => Err(FunctionsError::Invalid {
                field: "RoutingConfig",
                rule: "at most one additional version".into(),
            }
            .into()),
        }
    }

    pub fn create_alias(&self, spec: AliasSpec) -> Result<Alias, NodeError> {
        self.store.get(&spec.function)?;
        validate_alias_name(&spec.name)?;
        let version = spec.version.ok_or_else(|| FunctionsError::Invalid {
            field: "FunctionVersion",
            rule: "is required".into(),
        })?;
        self.check_version_exists(&spec.function, &version)?;
        let additional = Self::routing(spec.routing)?.flatten();
        validate_routing(&version, &additional)?;
        if let Some((v, _)) = &additional {
            self.check_version_exists(&spec.function, v)?;
        }
        let a = Alias {
            function: spec.function,
            name: spec.name,
            version,
            description: spec.description.unwrap_or_default(),
            additional,
        };
        self.store.insert_alias(&a)?;
        Ok(a)
    }

    pub fn update_alias(&self, spec: AliasSpec) -> Result<Alias, NodeError> {
        let mut a = self.store.get_alias(&spec.function, &spec.name)?;
        if let Some(v) = spec.version {
            self.check_version_exists(&spec.function, &v)?;
            a.version = v;
        }
        if let Some(d) = spec.description {
            a.description = d;
        }
        if let Some(r) = Self::routing(spec.routing)? {
            a.additional = r;
        }
        validate_routing(&a.version, &a.additional)?;
        if let Some((v, _)) = &a.additional {
            self.check_version_exists(&spec.function, v)?;
        }
        self.store.update_alias(&a)?;
        Ok(a)
    }

    pub fn get_alias(&self, function: &str, name: &str) -> Result<Alias, NodeError> {
        self.store.get(function)?;
        Ok(self.store.get_alias(function, name)?)
    }

    pub fn list_aliases(&self, function: &str) -> Result<Vec<Alias>, NodeError> {
        self.store.get(function)?;
        Ok(self.store.list_aliases(function)?)
    }

    pub fn delete_alias(&self, function: &str, name: &str) -> Result<(), NodeError> {
        self.store.get(function)?;
        self.store.delete_alias(function, name)?;
        self.invoker
            .observe
            .metrics
            .forget_qualifier(function, name);
        Ok(())
    }

    pub async fn publish_layer_version(
        &self,
        name: &str,
        zip: Vec<u8>,
        description: String,
        compatible_runtimes: Vec<String>,
    ) -> Result<LayerVersion, NodeError> {
        functions::validate_layer_name(name)?;
        functions::validate_compatible_runtimes(&compatible_runtimes)?;
        if zip.is_empty() {
            return Err(FunctionsError::Invalid {
                field: "ZipFile",
                rule: "a layer package is required".into(),
            }
            .into());
        }
        let image = self
            .store_package(
                zip,
                PackageRules {
                    runtime: None,
                    handler: String::new(),
                },
            )
            .await?;
        let l = LayerVersion {
            name: name.to_string(),
            version: 0,
            description,
            compatible_runtimes,
            sha256_hex: image.sha256_hex,
            sha256_b64: image.sha256_b64,
            code_size: image.zip_size,
            unzipped_size: image.unzipped_size,
            created: crate::time::lambda_timestamp(SystemTime::now()),
        };
        Ok(self.store.publish_layer(l)?)
    }

    pub fn list_layers(&self) -> Result<Vec<LayerVersion>, NodeError> {
        Ok(self.store.list_layers()?)
    }

    pub fn list_layer_versions(&self, name: &str) -> Result<Vec<LayerVersion>, NodeError> {
        Ok(self.store.list_layer_versions(name)?)
    }

    pub fn get_layer_version(&self, name: &str, version: u64) -> Result<LayerVersion, NodeError> {
        Ok(self.store.get_layer(name, version)?)
    }

    /// Deletes a layer version; functions that use it keep their copy.
    pub fn delete_layer_version(&self, name: &str, version: u64) -> Result<(), NodeError> {
        self.store.delete_layer(name, version)?;
        self.collect_garbage();
        Ok(())
    }
}
