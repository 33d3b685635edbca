"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 02:24:30.183462
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op
from sqlalchemy.dialects import mysql

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "certificates",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("snis", sa.JSON(), nullable=False),
        sa.Column("cert", sa.Text(), nullable=False),
        sa.Column("key", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_certificates_name"), ["name"], unique=True)

    op.create_table(
        "clusters",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("lb", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("hash_on", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("session_affinity", sa.JSON(), nullable=True),
        sa.Column("service", sa.JSON(), nullable=True),
        sa.Column("health_check", sa.JSON(), nullable=True),
        sa.Column("outlier_detection", sa.JSON(), nullable=False),
        sa.Column("timeouts", sa.JSON(), nullable=False),
        sa.Column("pool", sa.JSON(), nullable=False),
        sa.Column("scheme", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("policies", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_clusters_name"), ["name"], unique=True)

    op.create_table(
        "config_history",
        sa.Column("version", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("author", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("summary", sa.Text(), nullable=False),
        sa.Column("digest", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("resources", sa.Integer(), nullable=False),
        sa.Column("document", sa.LargeBinary().with_variant(mysql.LONGBLOB(), "mysql"), nullable=False),
        sa.PrimaryKeyConstraint("version"),
    )
    op.create_table(
        "config_state",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("version", sa.BigInteger(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "consumers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("consumers", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_consumers_name"), ["name"], unique=True)

    op.create_table(
        "listeners",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("protocol", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("node_group", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("policies", sa.JSON(), nullable=False),
        sa.Column("certificates", sa.JSON(), nullable=False),
        sa.Column("cluster", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("listeners", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_listeners_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_listeners_node_group"), ["node_group"], unique=False)

    op.create_table(
        "nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("node_group", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("hostname", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("build_version", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("control_plane_id", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("connected", sa.Boolean(), nullable=False),
        sa.Column("acked_version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("sent_version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("last_nack_version", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=True),
        sa.Column("last_nack_message", sa.Text(), nullable=True),
        sa.Column("last_nack_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("connected_since", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.Column("last_seen", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("node_id"),
    )
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_nodes_node_id"), ["node_id"], unique=False)

    op.create_table(
        "policies",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=32), nullable=False),
        sa.Column("config", sa.JSON(), nullable=False),
        sa.Column("is_global", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_policies_name"), ["name"], unique=True)

    op.create_table(
        "routes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("listener", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("hosts", sa.JSON(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("path_type", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("methods", sa.JSON(), nullable=False),
        sa.Column("headers", sa.JSON(), nullable=False),
        sa.Column("cluster", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=True),
        sa.Column("clusters", sa.JSON(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("policies", sa.JSON(), nullable=False),
        sa.Column("timeout", sa.Integer(), nullable=False),
        sa.Column("retry", sa.JSON(), nullable=True),
        sa.Column("prefix_rewrite", sqlmodel.sql.sqltypes.AutoString(length=1024), nullable=True),
        sa.Column("host_rewrite", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_routes_cluster"), ["cluster"], unique=False)
        batch_op.create_index(batch_op.f("ix_routes_listener"), ["listener"], unique=False)
        batch_op.create_index(batch_op.f("ix_routes_name"), ["name"], unique=True)

    op.create_table(
        "tunnels",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("created_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("updated_at", sqlmodel.sql.sqltypes.UTCDateTime(), nullable=False),
        sa.Column("node_group", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("bind_address", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("bind_port", sa.Integer(), nullable=False),
        sa.Column("token", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("tokens", sa.JSON(), nullable=False),
        sa.Column("allow_ports", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("vhost_http_port", sa.Integer(), nullable=False),
        sa.Column("vhost_https_port", sa.Integer(), nullable=False),
        sa.Column("subdomain_host", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("tls", sa.JSON(), nullable=False),
        sa.Column("heartbeat_timeout", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tunnels", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tunnels_name"), ["name"], unique=True)
        batch_op.create_index(batch_op.f("ix_tunnels_node_group"), ["node_group"], unique=False)

    op.create_table(
        "credentials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("consumer_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("key_sha256", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True),
        sa.Column("issuer", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("algorithm", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=True),
        sa.Column("secret", sa.Text(), nullable=True),
        sa.Column("public_key", sa.Text(), nullable=True),
        sa.Column("username", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=True),
        sa.ForeignKeyConstraint(["consumer_id"], ["consumers.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_credentials_consumer_id"), ["consumer_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_credentials_key_sha256"), ["key_sha256"], unique=False)

    op.create_table(
        "endpoints",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("cluster_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("address", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("port", sa.Integer(), nullable=False),
        sa.Column("weight", sa.Integer(), nullable=False),
        sa.Column("zone", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("version", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("draining", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["cluster_id"], ["clusters.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_endpoints_cluster_id"), ["cluster_id"], unique=False)

    op.create_table(
        "tunnel_mappings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("tunnel_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("agent", sqlmodel.sql.sqltypes.AutoString(length=63), nullable=False),
        sa.Column("type", sqlmodel.sql.sqltypes.AutoString(length=8), nullable=False),
        sa.Column("remote_port", sa.Integer(), nullable=False),
        sa.Column("local_ip", sqlmodel.sql.sqltypes.AutoString(length=255), nullable=False),
        sa.Column("local_port", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["tunnel_id"], ["tunnels.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("tunnel_mappings", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_tunnel_mappings_tunnel_id"), ["tunnel_id"], unique=False)

    op.execute(sa.text("INSERT INTO config_state (id, version, updated_at) VALUES (1, 0, CURRENT_TIMESTAMP)"))


def downgrade() -> None:
    with op.batch_alter_table("tunnel_mappings", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tunnel_mappings_tunnel_id"))

    op.drop_table("tunnel_mappings")
    with op.batch_alter_table("endpoints", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_endpoints_cluster_id"))

    op.drop_table("endpoints")
    with op.batch_alter_table("credentials", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_credentials_key_sha256"))
        batch_op.drop_index(batch_op.f("ix_credentials_consumer_id"))

    op.drop_table("credentials")
    with op.batch_alter_table("tunnels", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_tunnels_node_group"))
        batch_op.drop_index(batch_op.f("ix_tunnels_name"))

    op.drop_table("tunnels")
    with op.batch_alter_table("routes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_routes_name"))
        batch_op.drop_index(batch_op.f("ix_routes_listener"))
        batch_op.drop_index(batch_op.f("ix_routes_cluster"))

    op.drop_table("routes")
    with op.batch_alter_table("policies", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_policies_name"))

    op.drop_table("policies")
    with op.batch_alter_table("nodes", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_nodes_node_id"))

    op.drop_table("nodes")
    with op.batch_alter_table("listeners", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_listeners_node_group"))
        batch_op.drop_index(batch_op.f("ix_listeners_name"))

    op.drop_table("listeners")
    with op.batch_alter_table("consumers", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_consumers_name"))

    op.drop_table("consumers")
    op.drop_table("config_state")
    op.drop_table("config_history")
    with op.batch_alter_table("clusters", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_clusters_name"))

    op.drop_table("clusters")
    with op.batch_alter_table("certificates", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_certificates_name"))

    op.drop_table("certificates")
