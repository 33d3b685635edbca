"""External registry adapters: etcd, ZooKeeper, Consul, Nacos and Eureka.

`base.RegistryAdapter` is the one interface; `manager.RegistrySourceManager` runs one adapter
per `registries` resource on the registry leader. `adapter_class(type)` (in
`controlplane.registry.adapters.manager`) loads the class of a registry type.
"""
