"""Settings read from the environment (prefix ``POLDER_``), built in each composition root."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SIGNING_KEY = "polder-development-signing-key-not-for-production"
# The smallest POLDER_DB_POOL_SIZE a service process can run with (see ``Settings.db_pool_size``).
MIN_DB_POOL_SIZE = 4


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="POLDER_", extra="ignore", frozen=True)

    mode: Literal["development", "production"] = "development"
    log_level: str = "INFO"
    log_json: bool = True

    # Where `polder up` keeps the embedded Postgres data directory and logs.
    data_dir: Path = Path(".polder")

    # Infrastructure. Empty means "embedded" for `polder up`; services require them set.
    database_url: str = ""
    kafka_bootstrap: str = ""
    broker_port: int = 9092
    # Consumer-group liveness. Tansu completes a join after about half the session timeout and
    # only forgets a stopped member when its session expires, so tests use short values.
    kafka_session_timeout_ms: int = 10_000
    kafka_heartbeat_ms: int = 1_000
    # How long the broker may hold a fetch waiting for data. Tansu answers only when this runs
    # out, so it bounds the delay of every consumer (aiokafka's default of 500 ms would be
    # most of the ping→index budget).
    kafka_fetch_max_wait_ms: int = 20
    # The same for consumers whose delay nobody waits on (billing, the trace writer, the status
    # table, the matcher's views): on Tansu every consumer's empty fetch costs the broker CPU,
    # ~0.06 core per consumer at 20 ms, ~0.015 at 100 ms.
    kafka_background_fetch_max_wait_ms: int = Field(default=250, ge=0)
    # How long the producer gathers records into one request. Each request costs the broker and
    # every consumer the same whatever its size: at 1 000 events/s on Tansu, 5 ms instead of 2
    # takes a fifth off the broker's CPU for ~3 ms more latency.
    kafka_linger_ms: int = Field(default=5, ge=0, le=1000)
    # The same for the location service's producer, which publishes the ping stream (tens of
    # thousands of pings a second in frames; a 250 ms ping→index budget). On Tansu each produced
    # batch is an object that every later fetch of its partition lists, so the broker slows as
    # its log grows. 50 ms instead of 5 makes about a tenth as many batches: over 60 s at
    # 51 000 pings/s the p99 stays flat where at 25 ms it grew in the last 15 s, for ~25 ms
    # more latency (measurements in loadtests/README.md, "7 Dec").
    kafka_ping_linger_ms: int = Field(default=50, ge=0, le=1000)
    # Connections per service process; 0 takes the service's own default (dispatch 20, else 10).
    # At least MIN_DB_POOL_SIZE: a process keeps some for good (dispatch's matcher three: its
    # lock, the outbox relay's and the retention job's) and must have one left to work with.
    db_pool_size: int = Field(default=0, ge=0)
    # Isolation: appended to topic names (".ns") and Postgres schemas ("_ns"), so tests and
    # parallel deployments on one broker/database never see each other's data.
    namespace: str = Field(default="", pattern=r"^[a-z0-9_]*$")

    host: str = "127.0.0.1"
    location_port: int = 8001
    dispatch_port: int = 8002
    billing_port: int = 8003

    # Auth.
    jwt_secret: str = ""
    jwt_issuer: str = "polder"
    jwt_audience: str = "polder"
    token_ttl_s: int = 12 * 3600

    # HTTP limits.
    max_body_bytes: int = 256 * 1024
    rate_limit_per_s: float = 20.0  # requests per second per token subject
    rate_limit_burst: int = 40
    # Operators' reporting routes (billing's /v1/reports/*): a budget of their own per token.
    report_rate_limit_per_s: float = 1.0
    report_rate_limit_burst: int = 10

    # Location service.
    max_pings_per_batch: int = 500
    max_future_skew_s: float = 30.0
    max_speed_mps: float = 70.0  # 252 km/h: anything faster is a GPS jump, not a car
    max_ping_age_s: float = 24 * 3600.0  # older pings are refused as stale
    publish_timeout_s: float = 3.0  # an ingest request waits this long for the broker
    location_ttl_s: float = 60.0
    nearby_max_radius_m: float = 10_000.0
    nearby_max_limit: int = 200
    index_resolution: int = Field(default=9, ge=8, le=15)  # ≥ 8: retention keeps res-8 cells

    # Privacy: raw positions (location's trace, billing's thinned copy) received longer ago
    # than this are deleted; older positions are kept only as H3 resolution-8 cells.
    raw_ping_retention_h: float = Field(default=72.0, gt=0)
    retention_interval_s: float = Field(default=600.0, gt=0)  # how often the job looks
    # Outbox rows are deleted this long after they were sent (the relay prunes every minute):
    # kept for looking into what a service published, not for delivery.
    outbox_keep_h: float = Field(default=24.0, gt=0)

    # Dispatch service.
    city: str = "amsterdam"
    batch_window_s: float = 1.0
    # A batch writes the offers of its oldest orders first, this many in a transaction of their
    # own, then the rest: those orders have waited a whole window already (0: one transaction).
    batch_first_offers: int = Field(default=32, ge=0)
    offer_ttl_s: float = 15.0
    search_timeout_s: float = 300.0
    schedule_lead_s: float = 600.0  # a scheduled order is matched from this long before its time
    # Matching decisions (GET /v1/orders/{id}/decisions) are deleted this long after they were
    # made (one replica checks every retention_interval_s).
    decisions_keep_h: float = Field(default=720.0, gt=0)
    max_pickup_radius_m: float = 5_000.0
    candidates_per_order: int = 8
    road_factor: float = 1.3
    city_speed_mps: float = 8.3  # ~30 km/h door to door
    fairness_tolerance_s: float = 30.0
    fairness_weight: float = 0.5  # measured: half the ETA cost of 1.0 for the same wait gain
    driver_share: float = 0.75  # of the fare, for the estimated pay shown with an offer

    # Billing service.
    billing_silence_timeout_s: float = 900.0
    billing_ping_spacing_s: float = 5.0
    default_policy: str = "nl_hourly"

    @model_validator(mode="after")
    def _pool_has_room_to_work(self) -> Settings:
        if 0 < self.db_pool_size < MIN_DB_POOL_SIZE:
            raise ValueError(
                f"POLDER_DB_POOL_SIZE must be 0 (each service's default) or at least "
                f"{MIN_DB_POOL_SIZE}: dispatch's matcher keeps three connections for good "
                "and needs one more for its batches"
            )
        return self

    @model_validator(mode="after")
    def _production_needs_a_real_key(self) -> Settings:
        if self.mode == "production" and self.jwt_secret in ("", DEV_SIGNING_KEY):
            raise ValueError(
                "POLDER_JWT_SECRET must be set to a private key in production mode "
                "(the development signing key is refused)"
            )
        if len(self.signing_key.encode()) < 32:
            raise ValueError("POLDER_JWT_SECRET must be at least 32 bytes (HS256)")
        return self

    @property
    def signing_key(self) -> str:
        return self.jwt_secret or DEV_SIGNING_KEY

    def topic(self, name: str) -> str:
        return f"{name}.{self.namespace}" if self.namespace else name

    def db_schema(self, service: str) -> str:
        return f"{service}_{self.namespace}" if self.namespace else service

    def port_of(self, service: str) -> int:
        port: int = getattr(self, f"{service}_port")
        return port
