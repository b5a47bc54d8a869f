//! fspl's S3 backend: the s3:// transport and the jollyae-compatible spool uploader (fspl s3-upload), on object_store.

pub mod spool;
pub mod upload;
pub mod upload_s3;
