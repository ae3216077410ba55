// The classic kafkajs demo's producer, against `streams broker serve` instead of a
// docker-compose Kafka:
//
//   streams broker serve sqlite:///demo.db        # in another terminal: 127.0.0.1:9092
//   node producer.js                              # KAFKA_BROKERS=host:port to point elsewhere
//
// It creates test-topic if it is missing (the broker does not create topics on a produce),
// then sends a few messages and prints where they landed.
'use strict'
const { Kafka } = require('kafkajs')

const kafka = new Kafka({
  clientId: 'my-app',
  brokers: (process.env.KAFKA_BROKERS || 'localhost:9092').split(','),
})

async function main() {
  const admin = kafka.admin()
  await admin.connect()
  const created = await admin.createTopics({ topics: [{ topic: 'test-topic', numPartitions: 3 }] })
  console.log(created ? 'created test-topic' : 'test-topic exists')
  await admin.disconnect()

  const producer = kafka.producer()
  await producer.connect()
  const sent = await producer.send({
    topic: 'test-topic',
    messages: [
      { value: 'Hello KafkaJS user!' },
      { key: 'greeting', value: 'Hello from streams broker serve' },
      { key: 'greeting', value: 'no JVM, no Docker: one SQLite file' },
    ],
  })
  for (const { partition, baseOffset } of sent) {
    console.log(`sent to test-topic partition ${partition} from offset ${baseOffset}`)
  }
  await producer.disconnect()
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
