// Package config is what a parameter-server shard runs by: its job's
// consistency mode, ranks and staleness (Shard), and its optimizer with the
// optimizer's learning-rate schedule (Optimizer, Schedule), including the
// update arithmetic a shard applies to a block.
//
// It links no transport, so that the job spec and the coordinator can hold
// and validate a shard's configuration without linking NATS; package
// paramserver names these types as its own (paramserver.ShardConfig,
// paramserver.Optimizer).
package config
