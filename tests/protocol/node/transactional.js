// Consume-transform-produce with kafkajs transactions: a transactional producer
// (`transactional: true` in kafkajs terms: transactionalId, idempotent, one request in flight)
// reads --topic as group --group and writes each record's value upper-cased to --output.
// Every batch is written twice: first in a transaction that sends the batch's offsets and is
// then ABORTED (values prefixed "aborted:"), then in one that sends the offsets and COMMITS
// (prefixed "committed:"). Exits after --count input records. A read_committed reader of
// --output must see each input once, as "committed:", and never "aborted:".
'use strict'
const { args, client, emit, main } = require('./common')

main(async () => {
  const options = args()
  const count = Number(options.count)
  const kafka = client(options.bootstrap, 'streams-test-transactional')
  const producer = kafka.producer({
    transactionalId: options.transactionalId || `kafkajs-txn-${process.pid}`,
    idempotent: true,
    maxInFlightRequests: 1,
  })
  const consumer = kafka.consumer({
    groupId: options.group,
    readUncommitted: false,
    sessionTimeout: 6000,
    heartbeatInterval: 500,
    maxWaitTimeInMs: 200,
  })
  await producer.connect()
  await consumer.connect()
  await consumer.subscribe({ topic: options.topic, fromBeginning: true })
  let processed = 0
  let finish
  const finished = new Promise((resolve) => (finish = resolve))
  consumer.on(consumer.events.CRASH, (event) => finish(event.payload.error))
  await consumer.run({
    autoCommit: false,
    eachBatch: async ({ batch, resolveOffset, heartbeat }) => {
      if (batch.messages.length === 0) return
      const next = (BigInt(batch.lastOffset()) + 1n).toString()
      for (const outcome of ['aborted', 'committed']) {
        const transaction = await producer.transaction()
        await transaction.send({
          topic: options.output,
          messages: batch.messages.map((m) => ({
            key: m.key,
            value: `${outcome}:${m.value.toString().toUpperCase()}`,
          })),
        })
        await transaction.sendOffsets({
          consumerGroupId: options.group,
          topics: [{ topic: batch.topic, partitions: [{ partition: batch.partition, offset: next }] }],
        })
        if (outcome === 'aborted') await transaction.abort()
        else await transaction.commit()
        emit({ event: outcome, partition: batch.partition, records: batch.messages.length, next })
      }
      resolveOffset(batch.lastOffset())
      await heartbeat()
      processed += batch.messages.length
      if (processed >= count) finish()
    },
  })
  const error = await finished
  await consumer.disconnect()
  await producer.disconnect()
  if (error) throw error
  emit({ event: 'done', processed })
})
