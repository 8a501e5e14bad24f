//! The Kubernetes client: the API server's address from a flag
//! (`--kube-api-url`) or from the environment (in-cluster, `KUBECONFIG`).

use kube::Client;

/// Why no Kubernetes client could be made.
#[derive(Debug, thiserror::Error)]
pub enum KubeClientError {
    /// No API server address could be worked out.
    #[error(
        "cannot configure the Kubernetes client: {0} (in a pod: is the service account token mounted? elsewhere: set KUBECONFIG or --kube-api-url)"
    )]
    Config(String),
    /// The client could not be built from the configuration.
    #[error("cannot build the Kubernetes client: {0}")]
    Client(#[source] kube::Error),
}

/// A client for the API server at `api_url`, or (`None`) the one the
/// environment names (see [`config_for`]).
pub async fn client(api_url: Option<&str>) -> Result<Client, KubeClientError> {
    let config = config_for(api_url).await?;
    Client::try_from(config).map_err(KubeClientError::Client)
}

/// The client configuration for the API server at `api_url`, or (`None`)
/// the one the environment names: in-cluster, else `KUBECONFIG` or
/// `~/.kube/config`.
pub async fn config_for(api_url: Option<&str>) -> Result<kube::Config, KubeClientError> {
    Ok(match api_url {
        Some(url) => kube::Config::new(
            url.parse()
                .map_err(|e| KubeClientError::Config(format!("bad --kube-api-url {url:?}: {e}")))?,
        ),
        None => kube::Config::infer()
            .await
            .map_err(|e| KubeClientError::Config(e.to_string()))?,
    })
}
