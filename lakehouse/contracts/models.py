"""Pandera models of the silver tables: the columns and types each table promises.

Every column is nullable here: null keys and required values are row rules (see rules.py), so that
they quarantine rows instead of failing the whole batch.
"""

from __future__ import annotations

import pandera.pyspark as pa
from pyspark.sql import types as T


class FlightsModel(pa.DataFrameModel):
    flight_id: T.StringType() = pa.Field(nullable=True)
    flight_date: T.DateType() = pa.Field(nullable=True)
    year: T.IntegerType() = pa.Field(nullable=True)
    month: T.IntegerType() = pa.Field(nullable=True)
    day: T.IntegerType() = pa.Field(nullable=True)
    carrier: T.StringType() = pa.Field(nullable=True)
    flight: T.IntegerType() = pa.Field(nullable=True)
    tailnum: T.StringType() = pa.Field(nullable=True)
    origin: T.StringType() = pa.Field(nullable=True)
    dest: T.StringType() = pa.Field(nullable=True)
    sched_dep_time: T.IntegerType() = pa.Field(nullable=True)
    sched_arr_time: T.IntegerType() = pa.Field(nullable=True)
    dep_time: T.IntegerType() = pa.Field(nullable=True)
    arr_time: T.IntegerType() = pa.Field(nullable=True)
    dep_delay: T.IntegerType() = pa.Field(nullable=True)
    arr_delay: T.IntegerType() = pa.Field(nullable=True)
    air_time: T.IntegerType() = pa.Field(nullable=True)
    distance: T.IntegerType() = pa.Field(nullable=True)
    time_hour: T.TimestampType() = pa.Field(nullable=True)
    sched_dep_utc: T.TimestampType() = pa.Field(nullable=True)
    sched_arr_utc: T.TimestampType() = pa.Field(nullable=True)
    cancelled: T.BooleanType() = pa.Field(nullable=True)
    diverted: T.BooleanType() = pa.Field(nullable=True)
    dest_known: T.BooleanType() = pa.Field(nullable=True)
    plane_known: T.BooleanType() = pa.Field(nullable=True)


class WeatherModel(pa.DataFrameModel):
    origin: T.StringType() = pa.Field(nullable=True)
    time_hour: T.TimestampType() = pa.Field(nullable=True)
    obs_date: T.DateType() = pa.Field(nullable=True)
    hour: T.IntegerType() = pa.Field(nullable=True)
    temp: T.DoubleType() = pa.Field(nullable=True)
    dewp: T.DoubleType() = pa.Field(nullable=True)
    humid: T.DoubleType() = pa.Field(nullable=True)
    wind_dir: T.IntegerType() = pa.Field(nullable=True)
    wind_speed: T.DoubleType() = pa.Field(nullable=True)
    wind_gust: T.DoubleType() = pa.Field(nullable=True)
    precip: T.DoubleType() = pa.Field(nullable=True)
    pressure: T.DoubleType() = pa.Field(nullable=True)
    visib: T.DoubleType() = pa.Field(nullable=True)


class PlanesModel(pa.DataFrameModel):
    tailnum: T.StringType() = pa.Field(nullable=True)
    year: T.IntegerType() = pa.Field(nullable=True)
    type: T.StringType() = pa.Field(nullable=True)
    manufacturer: T.StringType() = pa.Field(nullable=True)
    model: T.StringType() = pa.Field(nullable=True)
    engines: T.IntegerType() = pa.Field(nullable=True)
    seats: T.IntegerType() = pa.Field(nullable=True)
    speed: T.IntegerType() = pa.Field(nullable=True)
    engine: T.StringType() = pa.Field(nullable=True)


class AirportsModel(pa.DataFrameModel):
    faa: T.StringType() = pa.Field(nullable=True)
    name: T.StringType() = pa.Field(nullable=True)
    lat: T.DoubleType() = pa.Field(nullable=True)
    lon: T.DoubleType() = pa.Field(nullable=True)
    alt: T.IntegerType() = pa.Field(nullable=True)
    tz: T.DoubleType() = pa.Field(nullable=True)
    dst: T.StringType() = pa.Field(nullable=True)
    tzone: T.StringType() = pa.Field(nullable=True)


class AirlinesModel(pa.DataFrameModel):
    carrier: T.StringType() = pa.Field(nullable=True)
    name: T.StringType() = pa.Field(nullable=True)
