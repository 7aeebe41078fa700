//! Pod volumes for a node without a container runtime: what each volume contains, how the
//! kubelet writes projected files (atomically, through a `..data` symlink), and where each
//! container mount comes from.
//!
//! Supported: `configMap`, `secret`, `downwardAPI`, `projected` (service account tokens,
//! ConfigMaps, Secrets, downward API), `emptyDir` and `hostPath`. Everything else (claims,
//! network and cloud disks, CSI, image volumes, ...) is refused with
//! [`VolumeError::Unsupported`].

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt, symlink};
use std::path::{Component, Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use k8s_openapi::api::core::v1::{
    ConfigMap, Container, DownwardAPIVolumeFile, KeyToPath, Pod, ProjectedVolumeSource, Secret,
    ServiceAccountTokenProjection, Volume, VolumeProjection,
};

use super::env::{Allocatable, FieldError, metadata_field, resource_field_value};

/// The API's default `defaultMode` of ConfigMap, Secret, downward API and projected volumes.
const DEFAULT_MODE: i32 = 0o644;
/// The API's default lifetime of a projected service account token.
const DEFAULT_TOKEN_EXPIRATION_SECONDS: i64 = 3600;
/// The kubelet's limits on projected file paths.
const MAX_PATH_LEN: usize = 4096;
const MAX_FILE_NAME_LEN: usize = 255;

/// The `..data` symlink to the current timestamped directory of a projected volume.
const DATA_DIR: &str = "..data";
const DATA_DIR_TMP: &str = "..data_tmp";

/// A service account token the pod's projected volumes need (the caller requests one per
/// key from the API server and passes them back in [`VolumeSources::tokens`]).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct TokenKey {
    /// `None`: the API server's own audiences.
    pub audience: Option<String>,
    pub expiration_seconds: i64,
}

impl fmt::Display for TokenKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.audience {
            Some(audience) => write!(f, "audience {audience:?}")?,
            None => f.write_str("the API server's audience")?,
        }
        write!(f, ", expiring after {}s", self.expiration_seconds)
    }
}

/// Every service account token the pod's projected volumes need, each once.
pub fn token_requests(pod: &Pod) -> Vec<TokenKey> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.volumes.as_deref())
        .unwrap_or_default();
    let keys: BTreeSet<TokenKey> = volumes
        .iter()
        .filter_map(|volume| volume.projected.as_ref())
        .flat_map(|projected| projected.sources.iter().flatten())
        .filter_map(|source| source.service_account_token.as_ref())
        .map(token_key)
        .collect();
    keys.into_iter().collect()
}

fn token_key(projection: &ServiceAccountTokenProjection) -> TokenKey {
    TokenKey {
        // An empty audience means the API server's, as in the kubelet.
        audience: projection
            .audience
            .clone()
            .filter(|audience| !audience.is_empty()),
        expiration_seconds: projection
            .expiration_seconds
            .unwrap_or(DEFAULT_TOKEN_EXPIRATION_SECONDS),
    }
}

/// Everything outside the volume spec that its content depends on.
pub struct VolumeSources<'a> {
    pub pod: &'a Pod,
    /// The pod namespace's ConfigMaps, by name.
    pub config_maps: &'a BTreeMap<String, ConfigMap>,
    /// The pod namespace's Secrets, by name.
    pub secrets: &'a BTreeMap<String, Secret>,
    /// The tokens of [`token_requests`].
    pub tokens: &'a BTreeMap<TokenKey, String>,
    pub node_allocatable_cpu_millis: i64,
    pub node_allocatable_memory_bytes: i64,
}

/// What a volume holds.
#[derive(Debug, Clone, PartialEq)]
pub enum VolumeContent {
    /// An empty directory the caller creates (whatever the `medium`).
    EmptyDir,
    /// Files to write with [`write_files`].
    Files(Vec<ProjectedFile>),
    /// A host path mounted as is; nothing is created or checked.
    HostPath(PathBuf),
}

/// One file of a projected volume.
#[derive(Debug, Clone, PartialEq)]
pub struct ProjectedFile {
    /// Relative and clean: no `..`, not absolute, no `.` or empty components.
    pub path: PathBuf,
    pub data: Vec<u8>,
    pub mode: u32,
}

/// A volume or mount the node cannot provide.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeError {
    #[error("volume {volume:?}: configmap {name:?} not found")]
    ConfigMapNotFound { volume: String, name: String },
    #[error("volume {volume:?}: secret {name:?} not found")]
    SecretNotFound { volume: String, name: String },
    #[error("volume {volume:?}: secret volume has no secretName")]
    MissingSecretName { volume: String },
    #[error("volume {volume:?}: configmap {name:?} references non-existent config key: {key}")]
    MissingConfigMapKey {
        volume: String,
        name: String,
        key: String,
    },
    #[error("volume {volume:?}: secret {name:?} references non-existent secret key: {key}")]
    MissingSecretKey {
        volume: String,
        name: String,
        key: String,
    },
    #[error("volume {volume:?}: invalid path {path:?}: {reason}")]
    InvalidPath {
        volume: String,
        path: String,
        reason: String,
    },
    #[error(
        "volume {volume:?}: invalid mode {mode} for {path:?}: must be between 0 and 0777 (octal)"
    )]
    InvalidMode {
        volume: String,
        path: String,
        mode: i32,
    },
    #[error("volume {volume:?}: {source}")]
    Field { volume: String, source: FieldError },
    #[error("volume {volume:?}: no service account token for {key}")]
    TokenUnavailable { volume: String, key: TokenKey },
    #[error("volume {volume:?}: invalid hostPath type {type_:?}")]
    InvalidHostPathType { volume: String, type_: String },
    #[error("volume {volume:?}: {kind} volumes are not supported by skein dev node")]
    Unsupported { volume: String, kind: String },
    #[error("cannot find volume {volume:?} to mount into container {container:?}")]
    MissingVolume { container: String, volume: String },
    #[error("container {container:?}: volumeMount {volume:?}: subPath {sub_path:?} {reason}")]
    InvalidSubPath {
        container: String,
        volume: String,
        sub_path: String,
        reason: &'static str,
    },
    #[error(
        "container {container:?}: volumeMount {volume:?} uses subPathExpr, which skein dev node \
         does not support"
    )]
    SubPathExprUnsupported { container: String, volume: String },
}

/// The content of `volume`.
pub fn volume_content(volume: &Volume, src: &VolumeSources) -> Result<VolumeContent, VolumeError> {
    let name = volume.name.as_str();
    let mut files = Payload::new(name);
    if let Some(source) = &volume.config_map {
        let entries = config_map_entries(src, name, &source.name, source.optional)?;
        files.add_keys(
            &entries,
            source.items.as_deref(),
            source.default_mode.unwrap_or(DEFAULT_MODE),
            source.optional == Some(true),
            |key| VolumeError::MissingConfigMapKey {
                volume: name.to_owned(),
                name: source.name.clone(),
                key: key.to_owned(),
            },
        )?;
    } else if let Some(source) = &volume.secret {
        let secret_name = source
            .secret_name
            .as_deref()
            .filter(|secret_name| !secret_name.is_empty())
            .ok_or_else(|| VolumeError::MissingSecretName {
                volume: name.to_owned(),
            })?;
        let entries = secret_entries(src, name, secret_name, source.optional)?;
        files.add_keys(
            &entries,
            source.items.as_deref(),
            source.default_mode.unwrap_or(DEFAULT_MODE),
            source.optional == Some(true),
            |key| VolumeError::MissingSecretKey {
                volume: name.to_owned(),
                name: secret_name.to_owned(),
                key: key.to_owned(),
            },
        )?;
    } else if let Some(source) = &volume.downward_api {
        files.add_downward_api(
            source.items.as_deref().unwrap_or_default(),
            source.default_mode.unwrap_or(DEFAULT_MODE),
            src,
        )?;
    } else if let Some(source) = &volume.projected {
        add_projected(&mut files, source, src)?;
    } else if volume.empty_dir.is_some() {
        return Ok(VolumeContent::EmptyDir);
    } else if let Some(source) = &volume.host_path {
        return host_path(name, &source.path, source.type_.as_deref());
    } else {
        return match other_kind(volume) {
            Some(kind) => Err(VolumeError::Unsupported {
                volume: name.to_owned(),
                kind,
            }),
            // No source at all: the API defaults it to an emptyDir.
            None => Ok(VolumeContent::EmptyDir),
        };
    }
    Ok(VolumeContent::Files(files.into_files()))
}

/// The kind of a volume source this module does not handle (`persistentVolumeClaim`, ...),
/// as its field name in the API.
fn other_kind(volume: &Volume) -> Option<String> {
    let value = serde_json::to_value(volume).ok()?;
    value
        .as_object()?
        .keys()
        .find(|key| key.as_str() != "name")
        .cloned()
}

fn host_path(volume: &str, path: &str, type_: Option<&str>) -> Result<VolumeContent, VolumeError> {
    const TYPES: [&str; 8] = [
        "",
        "DirectoryOrCreate",
        "Directory",
        "FileOrCreate",
        "File",
        "Socket",
        "CharDevice",
        "BlockDevice",
    ];
    let type_ = type_.unwrap_or_default();
    if !TYPES.contains(&type_) {
        return Err(VolumeError::InvalidHostPathType {
            volume: volume.to_owned(),
            type_: type_.to_owned(),
        });
    }
    Ok(VolumeContent::HostPath(PathBuf::from(path)))
}

fn add_projected(
    files: &mut Payload,
    source: &ProjectedVolumeSource,
    src: &VolumeSources,
) -> Result<(), VolumeError> {
    let default_mode = source.default_mode.unwrap_or(DEFAULT_MODE);
    for projection in source.sources.iter().flatten() {
        add_projection(files, projection, default_mode, src)?;
    }
    Ok(())
}

fn add_projection(
    files: &mut Payload,
    projection: &VolumeProjection,
    default_mode: i32,
    src: &VolumeSources,
) -> Result<(), VolumeError> {
    let volume = files.volume.clone();
    if let Some(source) = &projection.secret {
        let entries = secret_entries(src, &volume, &source.name, source.optional)?;
        files.add_keys(
            &entries,
            source.items.as_deref(),
            default_mode,
            source.optional == Some(true),
            |key| VolumeError::MissingSecretKey {
                volume: volume.clone(),
                name: source.name.clone(),
                key: key.to_owned(),
            },
        )
    } else if let Some(source) = &projection.config_map {
        let entries = config_map_entries(src, &volume, &source.name, source.optional)?;
        files.add_keys(
            &entries,
            source.items.as_deref(),
            default_mode,
            source.optional == Some(true),
            |key| VolumeError::MissingConfigMapKey {
                volume: volume.clone(),
                name: source.name.clone(),
                key: key.to_owned(),
            },
        )
    } else if let Some(source) = &projection.downward_api {
        files.add_downward_api(
            source.items.as_deref().unwrap_or_default(),
            default_mode,
            src,
        )
    } else if let Some(source) = &projection.service_account_token {
        let key = token_key(source);
        let token = src
            .tokens
            .get(&key)
            .ok_or_else(|| VolumeError::TokenUnavailable {
                volume: volume.clone(),
                key,
            })?;
        files.add(&source.path, token.as_bytes().to_vec(), default_mode)
    } else if projection.cluster_trust_bundle.is_some() {
        Err(VolumeError::Unsupported {
            volume,
            kind: "projected clusterTrustBundle".to_owned(),
        })
    } else if projection.pod_certificate.is_some() {
        Err(VolumeError::Unsupported {
            volume,
            kind: "projected podCertificate".to_owned(),
        })
    } else {
        Ok(())
    }
}

/// A ConfigMap's keys and contents; binaryData and data share one key space (the API
/// forbids overlaps). A missing optional ConfigMap is empty.
fn config_map_entries(
    src: &VolumeSources,
    volume: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    let Some(config_map) = src.config_maps.get(name) else {
        return missing_object(optional, || VolumeError::ConfigMapNotFound {
            volume: volume.to_owned(),
            name: name.to_owned(),
        });
    };
    let binary = config_map
        .binary_data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.0.clone()));
    let text = config_map
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.clone().into_bytes()));
    Ok(binary.chain(text).collect())
}

fn secret_entries(
    src: &VolumeSources,
    volume: &str,
    name: &str,
    optional: Option<bool>,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    let Some(secret) = src.secrets.get(name) else {
        return missing_object(optional, || VolumeError::SecretNotFound {
            volume: volume.to_owned(),
            name: name.to_owned(),
        });
    };
    Ok(secret
        .data
        .iter()
        .flatten()
        .map(|(key, value)| (key.clone(), value.0.clone()))
        .collect())
}

fn missing_object(
    optional: Option<bool>,
    error: impl FnOnce() -> VolumeError,
) -> Result<BTreeMap<String, Vec<u8>>, VolumeError> {
    if optional == Some(true) {
        Ok(BTreeMap::new())
    } else {
        Err(error())
    }
}

/// The files of one volume, by validated path; a later source's file replaces an earlier
/// one's, as in the kubelet's payload map.
struct Payload {
    volume: String,
    files: BTreeMap<PathBuf, (Vec<u8>, u32)>,
}

impl Payload {
    fn new(volume: &str) -> Self {
        Payload {
            volume: volume.to_owned(),
            files: BTreeMap::new(),
        }
    }

    fn add(&mut self, path: &str, data: Vec<u8>, mode: i32) -> Result<(), VolumeError> {
        let clean = clean_relative_path(path).map_err(|reason| VolumeError::InvalidPath {
            volume: self.volume.clone(),
            path: path.to_owned(),
            reason,
        })?;
        let mode = u32::try_from(mode)
            .ok()
            .filter(|mode| *mode <= 0o777)
            .ok_or_else(|| VolumeError::InvalidMode {
                volume: self.volume.clone(),
                path: path.to_owned(),
                mode,
            })?;
        self.files.insert(clean, (data, mode));
        Ok(())
    }

    /// ConfigMap or Secret keys: all of them under their own names, or the listed `items`.
    fn add_keys(
        &mut self,
        entries: &BTreeMap<String, Vec<u8>>,
        items: Option<&[KeyToPath]>,
        default_mode: i32,
        optional: bool,
        missing_key: impl Fn(&str) -> VolumeError,
    ) -> Result<(), VolumeError> {
        let items = items.unwrap_or_default();
        if items.is_empty() {
            for (key, data) in entries {
                self.add(key, data.clone(), default_mode)?;
            }
            return Ok(());
        }
        for item in items {
            match entries.get(&item.key) {
                Some(data) => {
                    self.add(&item.path, data.clone(), item.mode.unwrap_or(default_mode))?;
                }
                None if optional => {}
                None => return Err(missing_key(&item.key)),
            }
        }
        Ok(())
    }

    fn add_downward_api(
        &mut self,
        items: &[DownwardAPIVolumeFile],
        default_mode: i32,
        src: &VolumeSources,
    ) -> Result<(), VolumeError> {
        let allocatable = Allocatable {
            cpu_millis: src.node_allocatable_cpu_millis,
            memory_bytes: src.node_allocatable_memory_bytes,
        };
        for item in items {
            let value = if let Some(selector) = &item.field_ref {
                metadata_field(src.pod, &selector.field_path)
            } else if let Some(selector) = &item.resource_field_ref {
                // A volume has no container of its own: containerName is required.
                resource_field_value(src.pod, None, selector, allocatable)
            } else {
                Ok(String::new())
            };
            let value = value.map_err(|source| VolumeError::Field {
                volume: self.volume.clone(),
                source,
            })?;
            self.add(
                &item.path,
                value.into_bytes(),
                item.mode.unwrap_or(default_mode),
            )?;
        }
        Ok(())
    }

    fn into_files(self) -> Vec<ProjectedFile> {
        self.files
            .into_iter()
            .map(|(path, (data, mode))| ProjectedFile { path, data, mode })
            .collect()
    }
}

/// The kubelet's payload path rules (AtomicWriter's `validatePath`), returning the cleaned
/// path: relative, no `..` component, no first component starting with `..` (that namespace
/// belongs to `..data` and the timestamped directories).
fn clean_relative_path(path: &str) -> Result<PathBuf, String> {
    if path.is_empty() {
        return Err("must not be empty".to_owned());
    }
    if path.starts_with('/') {
        return Err("must be a relative path".to_owned());
    }
    if path.len() > MAX_PATH_LEN {
        return Err(format!(
            "must be less than or equal to {MAX_PATH_LEN} characters"
        ));
    }
    let parts: Vec<&str> = path.split('/').collect();
    if parts.contains(&"..") {
        return Err("must not contain '..'".to_owned());
    }
    if parts.iter().any(|part| part.len() > MAX_FILE_NAME_LEN) {
        return Err(format!(
            "file names must be less than or equal to {MAX_FILE_NAME_LEN} characters"
        ));
    }
    if parts[0].starts_with("..") {
        return Err("must not start with '..'".to_owned());
    }
    let clean: PathBuf = parts
        .iter()
        .filter(|part| !part.is_empty() && **part != ".")
        .collect();
    if clean.as_os_str().is_empty() {
        return Err("must name a file".to_owned());
    }
    Ok(clean)
}

// ---- atomic writes ----

/// Writes `files` into `dir` the way the kubelet's AtomicWriter does, so a reader never sees
/// a mix of old and new files: the files go into a fresh hidden directory `..<timestamp>`,
/// a `..data_tmp` symlink to it is renamed over `..data` (atomic), and each top-level path is
/// a symlink `name -> ..data/name`. Top-level paths that are gone are unlinked and the
/// previous timestamped directory removed. Nothing is rewritten when the content is the same.
pub fn write_files(dir: &Path, files: &[ProjectedFile]) -> io::Result<()> {
    for file in files {
        let valid = file
            .path
            .to_str()
            .and_then(|path| clean_relative_path(path).ok())
            .is_some_and(|clean| clean == file.path);
        if !valid {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("invalid projected file path {}", file.path.display()),
            ));
        }
    }
    fs::create_dir_all(dir)?;
    let data_link = dir.join(DATA_DIR);
    let old = fs::read_link(&data_link)
        .ok()
        .map(|target| dir.join(target));
    if let Some(old) = &old
        && holds_exactly(old, files)
    {
        return Ok(());
    }

    let new = new_timestamped_dir(dir)?;
    if let Err(err) = write_tree(&new, files) {
        let _ = fs::remove_dir_all(&new);
        return Err(err);
    }
    let new_name = new.file_name().map(PathBuf::from).unwrap_or_default();
    let tmp_link = dir.join(DATA_DIR_TMP);
    // A leftover of an interrupted write.
    let _ = fs::remove_file(&tmp_link);
    symlink(&new_name, &tmp_link)?;
    fs::rename(&tmp_link, &data_link)?;

    let visible = top_level_names(files);
    for name in &visible {
        let path = dir.join(name);
        if fs::symlink_metadata(&path).is_err() {
            symlink(Path::new(DATA_DIR).join(name), &path)?;
        }
    }
    if let Some(old) = old.filter(|old| *old != new) {
        remove_stale_links(dir, &old, &visible)?;
        match fs::remove_dir_all(&old) {
            Err(err) if err.kind() != io::ErrorKind::NotFound => return Err(err),
            _ => {}
        }
    }
    Ok(())
}

/// Whether the timestamped directory `dir` holds exactly `files`, content and mode.
fn holds_exactly(dir: &Path, files: &[ProjectedFile]) -> bool {
    let mut present = Vec::new();
    if collect_files(dir, Path::new(""), &mut present).is_err() {
        return false;
    }
    let wanted: BTreeSet<&Path> = files.iter().map(|file| file.path.as_path()).collect();
    let present: BTreeSet<&Path> = present.iter().map(PathBuf::as_path).collect();
    wanted == present
        && files.iter().all(|file| {
            let path = dir.join(&file.path);
            let same_mode = fs::metadata(&path)
                .is_ok_and(|meta| meta.permissions().mode() & 0o777 == file.mode);
            same_mode && fs::read(&path).is_ok_and(|data| data == file.data)
        })
}

/// The relative paths of the regular files under `dir`.
fn collect_files(dir: &Path, prefix: &Path, out: &mut Vec<PathBuf>) -> io::Result<()> {
    for entry in fs::read_dir(dir.join(prefix))? {
        let entry = entry?;
        let relative = prefix.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            collect_files(dir, &relative, out)?;
        } else {
            out.push(relative);
        }
    }
    Ok(())
}

/// Creates `dir/..YYYY_MM_DD_HH_MM_SS.<random>`, mode 0755 so other users can traverse it.
fn new_timestamped_dir(dir: &Path) -> io::Result<PathBuf> {
    let stamp = utc_stamp(SystemTime::now());
    loop {
        let path = dir.join(format!("..{stamp}.{:09}", fastrand::u32(..1_000_000_000)));
        match fs::DirBuilder::new().mode(0o755).create(&path) {
            Ok(()) => {
                fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
                return Ok(path);
            }
            Err(err) if err.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(err) => return Err(err),
        }
    }
}

/// `YYYY_MM_DD_HH_MM_SS` in UTC, the kubelet's timestamp layout.
fn utc_stamp(now: SystemTime) -> String {
    let secs = now
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_secs())
        .unwrap_or_default();
    let days = i64::try_from(secs / 86_400).unwrap_or_default();
    let rem = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}_{month:02}_{day:02}_{:02}_{:02}_{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 → (year, month, day), proleptic Gregorian (Howard Hinnant's
/// algorithm).
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

fn write_tree(root: &Path, files: &[ProjectedFile]) -> io::Result<()> {
    for file in files {
        let path = root.join(&file.path);
        if let Some(parent) = path.parent() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)?;
        }
        fs::write(&path, &file.data)?;
        // Explicitly, so the umask does not change it.
        fs::set_permissions(&path, fs::Permissions::from_mode(file.mode))?;
    }
    Ok(())
}

fn top_level_names(files: &[ProjectedFile]) -> BTreeSet<PathBuf> {
    files
        .iter()
        .filter_map(|file| match file.path.components().next() {
            Some(Component::Normal(name)) => Some(PathBuf::from(name)),
            _ => None,
        })
        .collect()
}

/// Unlinks the user-visible symlinks of the previous content that the new one lacks.
fn remove_stale_links(dir: &Path, old: &Path, visible: &BTreeSet<PathBuf>) -> io::Result<()> {
    let Ok(entries) = fs::read_dir(old) else {
        return Ok(());
    };
    for entry in entries {
        let name = PathBuf::from(entry?.file_name());
        if visible.contains(&name) {
            continue;
        }
        let path = dir.join(&name);
        if fs::symlink_metadata(&path).is_ok_and(|meta| meta.file_type().is_symlink()) {
            fs::remove_file(&path)?;
        }
    }
    Ok(())
}

// ---- mounts ----

/// One bind mount of a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// The container's mounts, in `volumeMounts` order. The source is `volume_dir(name)` (the
/// path itself for a hostPath volume), joined with `subPath` if any; the user-visible
/// symlinks of projected volumes resolve inside it. ConfigMap, Secret, downward API and
/// projected volumes are always read-only, as the kubelet mounts them.
pub fn container_mounts(
    pod: &Pod,
    container: &Container,
    volume_dir: impl Fn(&str) -> PathBuf,
) -> Result<Vec<Mount>, VolumeError> {
    let volumes = pod
        .spec
        .as_ref()
        .and_then(|spec| spec.volumes.as_deref())
        .unwrap_or_default();
    let mut mounts = Vec::new();
    for mount in container.volume_mounts.iter().flatten() {
        let volume = volumes
            .iter()
            .find(|volume| volume.name == mount.name)
            .ok_or_else(|| VolumeError::MissingVolume {
                container: container.name.clone(),
                volume: mount.name.clone(),
            })?;
        if mount
            .sub_path_expr
            .as_deref()
            .is_some_and(|e| !e.is_empty())
        {
            return Err(VolumeError::SubPathExprUnsupported {
                container: container.name.clone(),
                volume: mount.name.clone(),
            });
        }
        let mut source = match &volume.host_path {
            Some(host) => PathBuf::from(&host.path),
            None => volume_dir(&volume.name),
        };
        if let Some(sub_path) = mount.sub_path.as_deref().filter(|s| !s.is_empty()) {
            check_sub_path(sub_path).map_err(|reason| VolumeError::InvalidSubPath {
                container: container.name.clone(),
                volume: mount.name.clone(),
                sub_path: sub_path.to_owned(),
                reason,
            })?;
            source.push(sub_path);
        }
        // The kubelet makes a relative mountPath absolute.
        let target = Path::new("/").join(&mount.mount_path);
        mounts.push(Mount {
            source,
            target,
            read_only: mount.read_only == Some(true) || always_read_only(volume),
        });
    }
    Ok(mounts)
}

fn check_sub_path(sub_path: &str) -> Result<(), &'static str> {
    if sub_path.starts_with('/') {
        return Err("must not be an absolute path");
    }
    if sub_path.split('/').any(|part| part == "..") {
        return Err("must not contain '..'");
    }
    Ok(())
}

fn always_read_only(volume: &Volume) -> bool {
    volume.config_map.is_some()
        || volume.secret.is_some()
        || volume.downward_api.is_some()
        || volume.projected.is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde_json::json;

    fn pod(value: serde_json::Value) -> Pod {
        serde_json::from_value(value).expect("a valid pod")
    }

    fn volume(value: serde_json::Value) -> Volume {
        serde_json::from_value(value).expect("a valid volume")
    }

    fn test_pod() -> Pod {
        pod(json!({
            "metadata": {
                "name": "web-0", "namespace": "shop", "uid": "uid-1",
                "labels": {"tier": "front", "app": "web"},
                "annotations": {"a": "1"},
            },
            "spec": {
                "containers": [{
                    "name": "app",
                    "resources": {"requests": {"memory": "64Mi"}},
                }],
                "volumes": [
                    {"name": "token", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token"}},
                        {"serviceAccountToken": {"path": "mesh", "audience": "skein", "expirationSeconds": 600}},
                    ]}},
                    {"name": "again", "projected": {"sources": [
                        {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600, "audience": ""}},
                    ]}},
                    {"name": "config", "configMap": {"name": "settings"}},
                    {"name": "scratch", "emptyDir": {}},
                    {"name": "host", "hostPath": {"path": "/var/run/thing", "type": "Directory"}},
                ],
            },
        }))
    }

    struct Fixture {
        pod: Pod,
        config_maps: BTreeMap<String, ConfigMap>,
        secrets: BTreeMap<String, Secret>,
        tokens: BTreeMap<TokenKey, String>,
    }

    impl Fixture {
        fn new() -> Self {
            let mut config_maps = BTreeMap::new();
            config_maps.insert(
                "settings".to_owned(),
                ConfigMap {
                    metadata: ObjectMeta {
                        name: Some("settings".to_owned()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([
                        ("mode".to_owned(), "fast".to_owned()),
                        ("level".to_owned(), "3".to_owned()),
                    ])),
                    binary_data: Some(BTreeMap::from([(
                        "blob".to_owned(),
                        ByteString(vec![0, 1, 2]),
                    )])),
                    ..Default::default()
                },
            );
            let mut secrets = BTreeMap::new();
            secrets.insert(
                "creds".to_owned(),
                Secret {
                    metadata: ObjectMeta {
                        name: Some("creds".to_owned()),
                        ..Default::default()
                    },
                    data: Some(BTreeMap::from([(
                        "password".to_owned(),
                        ByteString(b"hunter2".to_vec()),
                    )])),
                    ..Default::default()
                },
            );
            let tokens = BTreeMap::from([
                (
                    TokenKey {
                        audience: None,
                        expiration_seconds: 3600,
                    },
                    "api-token".to_owned(),
                ),
                (
                    TokenKey {
                        audience: Some("skein".to_owned()),
                        expiration_seconds: 600,
                    },
                    "mesh-token".to_owned(),
                ),
            ]);
            Fixture {
                pod: test_pod(),
                config_maps,
                secrets,
                tokens,
            }
        }

        fn content(&self, volume_spec: serde_json::Value) -> Result<VolumeContent, VolumeError> {
            let sources = VolumeSources {
                pod: &self.pod,
                config_maps: &self.config_maps,
                secrets: &self.secrets,
                tokens: &self.tokens,
                node_allocatable_cpu_millis: 2000,
                node_allocatable_memory_bytes: 4 << 30,
            };
            volume_content(&volume(volume_spec), &sources)
        }

        fn files(&self, volume_spec: serde_json::Value) -> Vec<(String, String, u32)> {
            match self.content(volume_spec) {
                Ok(VolumeContent::Files(files)) => files
                    .into_iter()
                    .map(|f| {
                        (
                            f.path.display().to_string(),
                            String::from_utf8_lossy(&f.data).into_owned(),
                            f.mode,
                        )
                    })
                    .collect(),
                other => panic!("expected files, got {other:?}"),
            }
        }
    }

    fn file(path: &str, data: &str, mode: u32) -> (String, String, u32) {
        (path.to_owned(), data.to_owned(), mode)
    }

    #[test]
    fn token_requests_are_deduplicated_with_defaults() {
        assert_eq!(
            token_requests(&test_pod()),
            vec![
                TokenKey {
                    audience: None,
                    expiration_seconds: 3600
                },
                TokenKey {
                    audience: Some("skein".to_owned()),
                    expiration_seconds: 600
                },
            ]
        );
    }

    #[test]
    fn config_map_volumes() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.files(json!({"name": "v", "configMap": {"name": "settings"}})),
            vec![
                file("blob", "\u{0}\u{1}\u{2}", 0o644),
                file("level", "3", 0o644),
                file("mode", "fast", 0o644),
            ]
        );
        assert_eq!(
            fixture.files(json!({"name": "v", "configMap": {
                "name": "settings", "defaultMode": 0o600,
                "items": [{"key": "mode", "path": "conf/mode.txt"}, {"key": "level", "path": "lvl", "mode": 0o400}],
            }})),
            vec![file("conf/mode.txt", "fast", 0o600), file("lvl", "3", 0o400)]
        );
    }

    #[test]
    fn optional_and_missing_objects_and_keys() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.files(json!({"name": "v", "configMap": {"name": "gone", "optional": true}})),
            vec![]
        );
        assert_eq!(
            fixture.files(
                json!({"name": "v", "configMap": {"name": "settings", "optional": true,
                "items": [{"key": "nope", "path": "x"}, {"key": "mode", "path": "m"}]}})
            ),
            vec![file("m", "fast", 0o644)]
        );
        let err = |spec| fixture.content(spec).unwrap_err().to_string();
        assert_eq!(
            err(json!({"name": "v", "configMap": {"name": "gone"}})),
            r#"volume "v": configmap "gone" not found"#
        );
        assert_eq!(
            err(
                json!({"name": "v", "configMap": {"name": "settings", "items": [{"key": "nope", "path": "x"}]}})
            ),
            r#"volume "v": configmap "settings" references non-existent config key: nope"#
        );
        assert_eq!(
            err(json!({"name": "v", "secret": {"secretName": "gone"}})),
            r#"volume "v": secret "gone" not found"#
        );
        assert_eq!(
            err(
                json!({"name": "v", "secret": {"secretName": "creds", "items": [{"key": "nope", "path": "x"}]}})
            ),
            r#"volume "v": secret "creds" references non-existent secret key: nope"#
        );
    }

    #[test]
    fn secret_volumes() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.files(
                json!({"name": "v", "secret": {"secretName": "creds", "defaultMode": 0o400}})
            ),
            vec![file("password", "hunter2", 0o400)]
        );
        assert_eq!(
            fixture.files(json!({"name": "v", "secret": {"secretName": "gone", "optional": true}})),
            vec![]
        );
    }

    #[test]
    fn downward_api_volumes() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.files(json!({"name": "v", "downwardAPI": {"items": [
                {"path": "labels", "fieldRef": {"fieldPath": "metadata.labels"}},
                {"path": "annotations", "fieldRef": {"fieldPath": "metadata.annotations"}},
                {"path": "name", "fieldRef": {"fieldPath": "metadata.name"}, "mode": 0o600},
                {"path": "ns", "fieldRef": {"fieldPath": "metadata.namespace"}},
                {"path": "uid", "fieldRef": {"fieldPath": "metadata.uid"}},
                {"path": "app", "fieldRef": {"fieldPath": "metadata.labels['app']"}},
                {"path": "mem", "resourceFieldRef": {"containerName": "app", "resource": "limits.memory", "divisor": "1Mi"}},
                {"path": "req", "resourceFieldRef": {"containerName": "app", "resource": "requests.memory", "divisor": "1Mi"}},
            ]}})),
            vec![
                file("annotations", "a=\"1\"", 0o644),
                file("app", "web", 0o644),
                file("labels", "app=\"web\"\ntier=\"front\"", 0o644),
                file("mem", "4096", 0o644),
                file("name", "web-0", 0o600),
                file("ns", "shop", 0o644),
                file("req", "64", 0o644),
                file("uid", "uid-1", 0o644),
            ]
        );
        // Only metadata is available to volumes, and a resource needs its container.
        let err = |spec| fixture.content(spec).unwrap_err().to_string();
        assert_eq!(
            err(json!({"name": "v", "downwardAPI": {"items": [
                {"path": "node", "fieldRef": {"fieldPath": "spec.nodeName"}}]}})),
            r#"volume "v": unsupported fieldPath: spec.nodeName"#
        );
        assert_eq!(
            err(json!({"name": "v", "downwardAPI": {"items": [
                {"path": "cpu", "resourceFieldRef": {"resource": "limits.cpu"}}]}})),
            r#"volume "v": container  not found"#
        );
    }

    #[test]
    fn projected_volumes() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.files(json!({"name": "kube-api-access", "projected": {"defaultMode": 0o420, "sources": [
                {"serviceAccountToken": {"path": "token", "expirationSeconds": 3600}},
                {"serviceAccountToken": {"path": "mesh/token", "audience": "skein", "expirationSeconds": 600}},
                {"configMap": {"name": "settings", "items": [{"key": "mode", "path": "mode"}]}},
                {"secret": {"name": "creds"}},
                {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"fieldPath": "metadata.namespace"}}]}},
                {"secret": {"name": "gone", "optional": true}},
            ]}})),
            vec![
                file("mesh/token", "mesh-token", 0o420),
                file("mode", "fast", 0o420),
                file("namespace", "shop", 0o420),
                file("password", "hunter2", 0o420),
                file("token", "api-token", 0o420),
            ]
        );
        let err = |spec| fixture.content(spec).unwrap_err().to_string();
        assert_eq!(
            err(json!({"name": "v", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token", "audience": "other"}}]}})),
            r#"volume "v": no service account token for audience "other", expiring after 3600s"#
        );
        assert_eq!(
            err(json!({"name": "v", "projected": {"sources": [
                {"clusterTrustBundle": {"path": "ca.pem", "name": "bundle"}}]}})),
            r#"volume "v": projected clusterTrustBundle volumes are not supported by skein dev node"#
        );
        assert_eq!(
            err(json!({"name": "v", "projected": {"sources": [
                {"podCertificate": {"signerName": "x/y", "keyType": "ED25519", "credentialBundlePath": "c"}}]}})),
            r#"volume "v": projected podCertificate volumes are not supported by skein dev node"#
        );
    }

    #[test]
    fn invalid_paths_and_modes_are_refused() {
        let fixture = Fixture::new();
        for (path, reason) in [
            ("../escape", "must not contain '..'"),
            ("a/../b", "must not contain '..'"),
            ("/abs", "must be a relative path"),
            ("..hidden", "must not start with '..'"),
            ("", "must not be empty"),
        ] {
            let err = fixture
                .content(json!({"name": "v", "configMap": {"name": "settings",
                    "items": [{"key": "mode", "path": path}]}}))
                .unwrap_err();
            assert!(
                matches!(&err, VolumeError::InvalidPath { reason: r, .. } if r == reason),
                "{path}: {err}"
            );
        }
        assert_eq!(
            fixture.files(json!({"name": "v", "configMap": {"name": "settings",
                "items": [{"key": "mode", "path": "./a//b/"}]}})),
            vec![file("a/b", "fast", 0o644)]
        );
        let err = fixture
            .content(json!({"name": "v", "configMap": {"name": "settings", "defaultMode": 0o1777}}))
            .unwrap_err();
        assert!(matches!(err, VolumeError::InvalidMode { .. }), "{err}");
    }

    #[test]
    fn empty_dir_host_path_and_unsupported_kinds() {
        let fixture = Fixture::new();
        assert_eq!(
            fixture.content(json!({"name": "v", "emptyDir": {"medium": "Memory"}})),
            Ok(VolumeContent::EmptyDir)
        );
        assert_eq!(
            fixture.content(json!({"name": "v"})),
            Ok(VolumeContent::EmptyDir)
        );
        for type_ in ["", "Directory", "File", "DirectoryOrCreate"] {
            assert_eq!(
                fixture.content(
                    json!({"name": "v", "hostPath": {"path": "/srv/data", "type": type_}})
                ),
                Ok(VolumeContent::HostPath(PathBuf::from("/srv/data")))
            );
        }
        assert!(matches!(
            fixture.content(json!({"name": "v", "hostPath": {"path": "/x", "type": "Weird"}})),
            Err(VolumeError::InvalidHostPathType { .. })
        ));
        assert_eq!(
            fixture
                .content(json!({"name": "data", "persistentVolumeClaim": {"claimName": "c"}}))
                .unwrap_err()
                .to_string(),
            r#"volume "data": persistentVolumeClaim volumes are not supported by skein dev node"#
        );
        assert_eq!(
            fixture.content(json!({"name": "n", "nfs": {"server": "s", "path": "/p"}})),
            Err(VolumeError::Unsupported {
                volume: "n".to_owned(),
                kind: "nfs".to_owned()
            })
        );
        assert_eq!(
            fixture.content(json!({"name": "c", "csi": {"driver": "d"}})),
            Err(VolumeError::Unsupported {
                volume: "c".to_owned(),
                kind: "csi".to_owned()
            })
        );
    }

    fn projected(path: &str, data: &str, mode: u32) -> ProjectedFile {
        ProjectedFile {
            path: PathBuf::from(path),
            data: data.as_bytes().to_vec(),
            mode,
        }
    }

    fn timestamped_dirs(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("..") && name != DATA_DIR)
            .collect();
        names.sort();
        names
    }

    #[test]
    fn write_files_swaps_content_atomically() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("vol");
        write_files(
            &dir,
            &[
                projected("token", "one", 0o644),
                projected("conf/a.yaml", "a: 1", 0o600),
                projected("old", "bye", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("token")).unwrap(), "one");
        assert_eq!(fs::read_to_string(dir.join("conf/a.yaml")).unwrap(), "a: 1");
        assert_eq!(
            fs::read_link(dir.join("token")).unwrap(),
            Path::new("..data/token")
        );
        assert_eq!(
            fs::metadata(dir.join("conf/a.yaml"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
        let first = timestamped_dirs(&dir);
        assert_eq!(first.len(), 1, "{first:?}");
        assert!(first[0].starts_with("..20"), "{first:?}");
        assert_eq!(
            fs::read_link(dir.join(DATA_DIR)).unwrap(),
            Path::new(&first[0])
        );

        // The same content again: nothing changes.
        write_files(
            &dir,
            &[
                projected("token", "one", 0o644),
                projected("conf/a.yaml", "a: 1", 0o600),
                projected("old", "bye", 0o644),
            ],
        )
        .unwrap();
        assert_eq!(timestamped_dirs(&dir), first);

        // An update replaces the content, drops removed paths and the old directory.
        write_files(
            &dir,
            &[
                projected("token", "two", 0o644),
                projected("conf/a.yaml", "a: 2", 0o600),
            ],
        )
        .unwrap();
        assert_eq!(fs::read_to_string(dir.join("token")).unwrap(), "two");
        assert_eq!(fs::read_to_string(dir.join("conf/a.yaml")).unwrap(), "a: 2");
        assert!(fs::symlink_metadata(dir.join("old")).is_err());
        assert!(!dir.join(DATA_DIR_TMP).exists());
        let second = timestamped_dirs(&dir);
        assert_eq!(second.len(), 1, "{second:?}");
        assert_ne!(second, first);
        assert_eq!(
            fs::read_link(dir.join(DATA_DIR)).unwrap(),
            Path::new(&second[0])
        );
    }

    #[test]
    fn write_files_refuses_unclean_paths() {
        let tmp = tempfile::tempdir().unwrap();
        for path in ["../x", "/abs", "..data", "./a", ""] {
            let err = write_files(tmp.path(), &[projected(path, "x", 0o644)]).unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidInput, "{path}");
        }
    }

    #[test]
    fn timestamps_use_the_kubelet_layout() {
        let at = UNIX_EPOCH + std::time::Duration::from_secs(1_456_412_345);
        assert_eq!(utc_stamp(at), "2016_02_25_14_59_05");
        assert_eq!(utc_stamp(UNIX_EPOCH), "1970_01_01_00_00_00");
    }

    #[test]
    fn container_mounts_map_volumes() {
        let pod = test_pod();
        let container: Container = serde_json::from_value(json!({
            "name": "app",
            "volumeMounts": [
                {"name": "token", "mountPath": "/var/run/secrets/kubernetes.io/serviceaccount"},
                {"name": "config", "mountPath": "/etc/app/mode", "subPath": "mode"},
                {"name": "scratch", "mountPath": "/tmp"},
                {"name": "scratch", "mountPath": "/ro", "readOnly": true},
                {"name": "host", "mountPath": "/thing", "subPath": "sub/dir"},
                {"name": "scratch", "mountPath": "relative"},
            ],
        }))
        .unwrap();
        let mounts = container_mounts(&pod, &container, |name| {
            PathBuf::from("/pods/p1/volumes").join(name)
        })
        .unwrap();
        let expected = [
            (
                "/pods/p1/volumes/token",
                "/var/run/secrets/kubernetes.io/serviceaccount",
                true,
            ),
            ("/pods/p1/volumes/config/mode", "/etc/app/mode", true),
            ("/pods/p1/volumes/scratch", "/tmp", false),
            ("/pods/p1/volumes/scratch", "/ro", true),
            ("/var/run/thing/sub/dir", "/thing", false),
            ("/pods/p1/volumes/scratch", "/relative", false),
        ];
        let got: Vec<(String, String, bool)> = mounts
            .iter()
            .map(|m| {
                (
                    m.source.display().to_string(),
                    m.target.display().to_string(),
                    m.read_only,
                )
            })
            .collect();
        let expected: Vec<(String, String, bool)> = expected
            .iter()
            .map(|(s, t, r)| ((*s).to_owned(), (*t).to_owned(), *r))
            .collect();
        assert_eq!(got, expected);
    }

    #[test]
    fn container_mount_errors() {
        let pod = test_pod();
        let mounts = |spec: serde_json::Value| {
            let container: Container =
                serde_json::from_value(json!({"name": "app", "volumeMounts": [spec]})).unwrap();
            container_mounts(&pod, &container, |name| PathBuf::from("/v").join(name))
                .unwrap_err()
                .to_string()
        };
        assert_eq!(
            mounts(json!({"name": "ghost", "mountPath": "/x"})),
            r#"cannot find volume "ghost" to mount into container "app""#
        );
        assert_eq!(
            mounts(json!({"name": "scratch", "mountPath": "/x", "subPath": "../up"})),
            r#"container "app": volumeMount "scratch": subPath "../up" must not contain '..'"#
        );
        assert_eq!(
            mounts(json!({"name": "scratch", "mountPath": "/x", "subPath": "/abs"})),
            r#"container "app": volumeMount "scratch": subPath "/abs" must not be an absolute path"#
        );
        assert_eq!(
            mounts(json!({"name": "scratch", "mountPath": "/x", "subPathExpr": "$(POD)"})),
            r#"container "app": volumeMount "scratch" uses subPathExpr, which skein dev node does not support"#
        );
    }
}
