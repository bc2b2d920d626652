"""Baselines for bench/sinks.sh, on the topic `bench-sluice` written by sluice's csv source.

seeds:    the seeds' way into MySQL -- a Python consumer (kafka-python) and pymysql executemany
          per 1000 rows, commit per batch.
loaddata: LOAD DATA LOCAL INFILE of the CSV into a table of the same layout (the server's bulk
          load ceiling).
Prints rows and seconds of the timed part.
"""
import json
import sys
import time


def connect(port):
    import pymysql

    return pymysql.connect(host="127.0.0.1", port=int(port), user="sluice", password="sluice",
                           database="sluice", local_infile=True, autocommit=False)


TABLE = ("CREATE TABLE {} (`Date` DATE NOT NULL PRIMARY KEY, `Open` DOUBLE, `High` DOUBLE, `Low` DOUBLE, "
         "`Close` DOUBLE, `Adj Close` DOUBLE, `Volume` BIGINT) ENGINE=InnoDB")


def seeds(kafka, port, rows):
    from kafka import KafkaConsumer

    db = connect(port)
    cur = db.cursor()
    cur.execute("DROP TABLE IF EXISTS bench_seeds")
    # No primary key: the repeated CSV holds each date many times.
    cur.execute(TABLE.format("bench_seeds").replace(" NOT NULL PRIMARY KEY", ""))
    consumer = KafkaConsumer("bench-sluice", bootstrap_servers=[kafka], auto_offset_reset="earliest",
                             group_id="bench-seeds", enable_auto_commit=True)
    sql = "INSERT INTO bench_seeds VALUES (%s,%s,%s,%s,%s,%s,%s)"
    started = time.perf_counter()
    done, batch = 0, []
    for message in consumer:
        v = json.loads(message.value)
        batch.append((v["Date"], v["Open"], v["High"], v["Low"], v["Close"], v["Adj Close"], v["Volume"]))
        if len(batch) == 1000 or done + len(batch) == rows:
            cur.executemany(sql, batch)
            db.commit()
            done += len(batch)
            batch = []
            if done == rows:
                break
    return done, time.perf_counter() - started


def loaddata(csv_path, port):
    db = connect(port)
    cur = db.cursor()
    cur.execute("DROP TABLE IF EXISTS bench_load")
    cur.execute(TABLE.format("bench_load").replace(" NOT NULL PRIMARY KEY", ""))
    started = time.perf_counter()
    cur.execute(
        "LOAD DATA LOCAL INFILE %s INTO TABLE bench_load FIELDS TERMINATED BY ',' IGNORE 1 LINES "
        "(`Date`, @o, @h, @l, @c, @a, @v) SET `Open`=NULLIF(@o,'null'), `High`=NULLIF(@h,'null'), "
        "`Low`=NULLIF(@l,'null'), `Close`=NULLIF(@c,'null'), `Adj Close`=NULLIF(@a,'null'), `Volume`=NULLIF(@v,'null')",
        (csv_path,))
    db.commit()
    elapsed = time.perf_counter() - started
    cur.execute("SELECT COUNT(*) FROM bench_load")
    return cur.fetchone()[0], elapsed


if __name__ == "__main__":
    kind = sys.argv[1]
    if kind == "seeds":
        print(*seeds(sys.argv[2], sys.argv[3], int(sys.argv[4])))
    else:
        print(*loaddata(sys.argv[2], sys.argv[3]))
