/**
 * The Effect API: the services, their layers, the typed errors and the metrics.
 *
 * @since 0.1.0
 */
export * as AttachmentStore from "./AttachmentStore.js"
export * as Capability from "./Capability.js"
export * as Channel from "./Channel.js"
export * as Cleanup from "./Cleanup.js"
export * as ClusterEmitter from "./ClusterEmitter.js"
export * as Cluster from "./Cluster.js"
export * as Codec from "./Codec.js"
export * as AdapterConfig from "./AdapterConfig.js"
export * as Database from "./Database.js"
export * as Errors from "./Errors.js"
export * as Heartbeat from "./Heartbeat.js"
export * as Listener from "./Listener.js"
export * as Metrics from "./Metrics.js"
export * as Primary from "./Primary.js"
export * as Protocol from "./Protocol.js"
export * as Publisher from "./Publisher.js"
export * as Recovery from "./recovery/Recovery.js"
export { makeAdapterFactory, makeAdapterFactoryPools, PostgresAdapter } from "./Adapter.js"
export * as Placement from "./Placement.js"
