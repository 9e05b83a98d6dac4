"""MLflow's spark_udf scoring a Parquet file into another on a local Spark (run by
benchmarks/bulk_scoring.py --spark, under benchmarks/peers/.venv-spark's Python). Prints the
seconds from the session's start to the output written.

    python spark_score.py MODEL INPUT.parquet OUTPUT.parquet
"""

import os
import sys
import time

import mlflow.pyfunc
from pyspark.sql import SparkSession


def main() -> None:
    model, source, target = sys.argv[1:4]
    # Spark's Python workers run this interpreter (with pandas and the model's packages).
    os.environ["PYSPARK_PYTHON"] = sys.executable
    started = time.perf_counter()
    spark = (
        SparkSession.builder.master("local[2]")
        .config("spark.driver.memory", "4g")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "65536")
        .config("spark.ui.enabled", "false")
        .getOrCreate()
    )
    frame = spark.read.parquet(source)
    predict = mlflow.pyfunc.spark_udf(spark, model, result_type="double", env_manager="local")
    frame.select(predict(*frame.columns).alias("predictions")).write.mode("overwrite").parquet(
        target
    )
    print(time.perf_counter() - started)
    spark.stop()


if __name__ == "__main__":
    main()
